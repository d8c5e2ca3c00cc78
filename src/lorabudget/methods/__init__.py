"""Adapter methods: the registry every other part derives from (``METHODS``), the PEFT config builders, and the
short module names adapters are placed on. Depends on nothing else in lorabudget but ``errors``."""
