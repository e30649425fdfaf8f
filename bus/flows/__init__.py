"""Flows: declarative mediation between topics."""
