"""Feature spec and encoder shared by the trainer and the service."""
