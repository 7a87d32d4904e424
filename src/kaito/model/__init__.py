"""Model weights as OCI images: ``kaito model package`` (`package`).

A user-facing tool, not dev tooling: a platform engineer runs it to put a preset's
weights in their own registry (ACR) for private presets and air-gapped clusters, and
names the result in a Workspace's ``presetOptions.modelImage``. The image format is a
contract with the ``fetch-weights`` init container, so it lives in
``kaito_contracts.model_image``; this package only gathers the folder, the labels and
the credentials, and reports progress.
"""

from kaito.model.package import PackageResult, package_folder

__all__ = ["PackageResult", "package_folder"]
