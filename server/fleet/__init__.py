"""The fleet registry: vehicles, their ECUs, provisioning."""
