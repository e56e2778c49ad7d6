"""The AWS SDK a Lambda Python runtime ships (boto3 and what it needs), pinned once for the runtime
image and for local mode.

Lambda's Python runtimes carry boto3 outside the function's code: a function or a layer may bring its
own version, which then wins, because the runtime's packages come after the code and the layers on
the import path (``LAMINA_RUNTIME_PACKAGES``). The runtime itself never imports them: a cold start
pays for boto3 only when the function imports it. The versions are those of the botocore service
model the project's Lambda reference was written against; all pure Python, so one install serves
every Python version.
"""

from __future__ import annotations

PACKAGES = (
    "boto3==1.43.11",
    "botocore==1.43.11",
    "s3transfer==0.17.1",
    "jmespath==1.1.0",
    "python-dateutil==2.9.0.post0",
    "six==1.17.0",
    "urllib3==2.8.0",
)
#: Where the runtime image installs them (`pip install --target`).
IMAGE_DIR = "/var/runtime/vendor"


def requirements() -> str:
    """The pins as a requirements file (the image's build reads it from here)."""
    return "".join(f"{p}\n" for p in PACKAGES)


if __name__ == "__main__":
    import sys

    sys.stdout.write(requirements())
