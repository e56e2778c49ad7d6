"""The real-pod tier's caller identity: an access key the gateway knows, mapped to a user whom a Role
allows to invoke, get and list the functions of the tests' namespace, and SigV4 for plain HTTP."""

from __future__ import annotations

import contextlib
import secrets
import urllib.request
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from kubernetes import client
from kubernetes.client.exceptions import ApiException


@dataclass(frozen=True)
class AccessKey:
    key_id: str
    secret: str
    user: str


def _replace(create: object, delete: object) -> None:
    with contextlib.suppress(ApiException):
        delete()  # type: ignore[operator]
    create()  # type: ignore[operator]


def grant_access_key(api: client.ApiClient, system_ns: str, functions_ns: str, user: str) -> AccessKey:
    """A fresh access key for ``user`` (a Secret of type lamina.dev/access-key in the release namespace)
    and a Role + RoleBinding in ``functions_ns`` allowing that user invoke, get and list on functions.
    Replaced on every run, as the release is kept between runs."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    key = AccessKey("AKID" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30), user)
    name = f"{user}-key"
    secret = {
        "metadata": {"name": name},
        "type": "lamina.dev/access-key",
        "stringData": {"accessKeyId": key.key_id, "secretAccessKey": key.secret, "user": user},
    }
    role = {
        "metadata": {"name": user},
        "rules": [
            {"apiGroups": ["lamina.dev"], "resources": ["functions"], "verbs": ["invoke", "get", "list"]}
        ],
    }
    binding = {
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    _replace(
        lambda: core.create_namespaced_secret(system_ns, secret),
        lambda: core.delete_namespaced_secret(name, system_ns),
    )
    _replace(
        lambda: rbac.create_namespaced_role(functions_ns, role),
        lambda: rbac.delete_namespaced_role(user, functions_ns),
    )
    _replace(
        lambda: rbac.create_namespaced_role_binding(functions_ns, binding),
        lambda: rbac.delete_namespaced_role_binding(user, functions_ns),
    )
    return key


def signed_request(
    key: AccessKey, region: str, url: str, data: bytes | None = None, method: str = "GET"
) -> urllib.request.Request:
    """A urllib request signed as botocore signs for the Lambda service (the HTTP trigger takes
    the same signatures as a function URL with AuthType AWS_IAM)."""
    request = AWSRequest(method=method, url=url, data=data or b"")
    SigV4Auth(Credentials(key.key_id, key.secret), "lambda", region).add_auth(request)
    return urllib.request.Request(url, data=data, method=method, headers=dict(request.headers.items()))
