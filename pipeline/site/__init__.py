"""Site: what a cloud site runs on a VO's signed image list (``invoke verify-list``).

``verify`` checks the S/MIME signature against the given CA only, the list's fields and its
binding to the URL and VO, then downloads and checks the images; ``crl`` refuses revoked signers.
"""
