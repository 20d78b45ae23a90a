"""The AppDB-like catalogue: appliances, versions, images, audits, endorsements, signed VO image lists.

Callers outside this package use ``client.open_catalogue()`` and the types in ``contract``.
"""
