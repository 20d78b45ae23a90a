"""The AppDB-like catalogue: appliances, versions, images, audits, endorsements, signed VO image lists.

Callers outside this package use ``client.open_catalogue()`` and the types in ``contract`` (the
``Catalogue`` protocol); its implementations are ``inprocess`` (this service's code, for database URLs)
and ``http_client`` (the REST API). The service (``app``, ``server``) never imports the client.
"""
