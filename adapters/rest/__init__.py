"""The REST adapter: inbound webhooks and publish API, outbound calls, polling sources."""
