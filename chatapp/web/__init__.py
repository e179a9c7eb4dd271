"""HTTP routes the app adds to Chainlit's FastAPI app: access control, health, metrics, branding,
and the admin console under /admin (console/)."""
