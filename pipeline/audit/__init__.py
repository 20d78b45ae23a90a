"""Audit: the offline policy audit of a built image (``invoke audit-image``).

``report`` runs every check of ``policy`` on a root filesystem copied out of the disk by ``disk``
(``sshd`` reads sshd's effective settings from the copied files) and writes ``audit.json``.
Used by the endorse stage and by sites auditing an image from outside.
"""
