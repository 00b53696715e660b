"""Events: the original's RabbitMQ messages (each requested sha), JSON events of what happened to blobs, webhooks."""
