"""A conversation turn: the assistant that streams a reply, the prompt it builds and the KV cache it reuses."""
