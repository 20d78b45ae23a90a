"""vmi-pipeline: build, check, package, publish and endorse VM images for research-cloud federations.

The stages, in the order data flows through them:
appliance definition -> build (qcow2 + manifest) -> package (OVA, qcow2, sums)
-> publish (repository + catalogue) -> endorse (audit + signed VO image list) -> sites verify.
"""

__version__ = "0.1.0"
