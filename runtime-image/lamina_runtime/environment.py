"""The reserved environment variables a Lambda Python runtime sees, filled in when the host left them out.

The host normally sets them; defaults here let `python -m lamina_runtime.worker` run on its own too.
"""

from __future__ import annotations

import os
import sys
import time

#: The one region of an installation's ARNs and of AWS_REGION, unless LAMINA_REGION names another.
DEFAULT_REGION = "us-east-1"
#: The account id every ARN carries.
ACCOUNT_ID = "000000000000"


def installation_region() -> str:
    """The region lamina reports everywhere (ARNs, AWS_REGION, events): LAMINA_REGION or us-east-1."""
    return os.environ.get("LAMINA_REGION") or DEFAULT_REGION


def apply_defaults(env: os._Environ[str] | dict[str, str]) -> None:
    major, minor = sys.version_info[:2]
    name = env.setdefault("AWS_LAMBDA_FUNCTION_NAME", "function")
    version = env.setdefault("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    env.setdefault("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
    env.setdefault("AWS_LAMBDA_LOG_GROUP_NAME", f"/aws/lambda/{name}")
    if "AWS_LAMBDA_LOG_STREAM_NAME" not in env:
        day = time.strftime("%Y/%m/%d", time.gmtime())
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = f"{day}/[{version}]{os.urandom(16).hex()}"
    region = env.setdefault("AWS_REGION", env.get("AWS_DEFAULT_REGION") or installation_region())
    env.setdefault("AWS_DEFAULT_REGION", region)
    # The interpreter that really runs the function, whatever was declared: never a silent substitute.
    env["AWS_EXECUTION_ENV"] = f"AWS_Lambda_python{major}.{minor}"
    env.setdefault("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
    env.setdefault("LAMBDA_TASK_ROOT", os.getcwd())
    env.setdefault("LAMBDA_RUNTIME_DIR", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env.setdefault("LANG", "en_US.UTF-8")
    if env.get("TZ") != "UTC":
        env["TZ"] = "UTC"
        time.tzset()


def runtime_version() -> str:
    """What INIT_START names as the runtime version: Lambda writes python:3.12.v38, lamina the
    interpreter's own release (python:3.12.14)."""
    major, minor, micro = sys.version_info[:3]
    return f"python:{major}.{minor}.{micro}"


def runtime_version_arn(region: str, version: str) -> str:
    """A runtime version ARN in Lambda's shape, naming this interpreter build."""
    try:  # the C module alone: hashlib's import would cost a cold start milliseconds
        from _sha2 import sha256  # type: ignore[import-not-found]  # 3.12+
    except ImportError:
        from _sha256 import sha256  # type: ignore[import-not-found]  # 3.11

    digest = sha256(f"{version}|{sys.version}".encode()).hexdigest()
    return f"arn:aws:lambda:{region}::runtime:{digest}"
