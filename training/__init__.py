"""Offline trainer: data readers, synthetic logs, feature-spec fitting, the model ladder, export."""
