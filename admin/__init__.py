"""travel-admin: datasets, training, deployments and experiments."""
