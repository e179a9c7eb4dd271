"""travel-chat: the chat app, its routing, storage and model backends."""
