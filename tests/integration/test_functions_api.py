"""boto3's read-only Lambda control-plane calls against `lamina local`: list, get, configuration."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from botocore.paginate import PageIterator


def test_list_functions_pages_through_every_function(lambda_client) -> None:
    paginator = lambda_client.get_paginator("list_functions")
    pages: PageIterator = paginator.paginate(PaginationConfig={"PageSize": 3})
    seen = [f["FunctionName"] for page in pages for f in page["Functions"]]
    assert len(seen) == len(set(seen)) > 3  # several pages, nothing twice
    assert {"hello", "echo", "sleeper", "throttled", "custom"} <= set(seen)
    everything = lambda_client.list_functions()["Functions"]
    assert sorted(f["FunctionName"] for f in everything) == sorted(seen)


def test_get_function_describes_configuration_and_concurrency(lambda_client) -> None:
    sleeper = lambda_client.get_function(FunctionName="sleeper")
    config = sleeper["Configuration"]
    assert config["FunctionName"] == "sleeper"
    assert config["FunctionArn"].endswith(":function:sleeper")
    assert config["Handler"] == "index.handler" and config["Runtime"] == "python3.12"
    assert config["Timeout"] == 2 and config["MemorySize"] == 128
    assert config["State"] == "Active" and config["Version"] == "$LATEST"
    assert "Environment" not in config  # values may come from Secrets; not served unauthenticated
    assert sleeper["Concurrency"] == {"ReservedConcurrentExecutions": 2}

    echo = lambda_client.get_function_configuration(FunctionName="echo")
    assert echo["MemorySize"] == 256 and echo["CodeSha256"]
    assert "Concurrency" not in lambda_client.get_function(FunctionName="echo")
    assert (
        lambda_client.get_function_concurrency(FunctionName="throttled")["ReservedConcurrentExecutions"] == 0
    )
    assert "ReservedConcurrentExecutions" not in lambda_client.get_function_concurrency(FunctionName="echo")
    custom = lambda_client.get_function_configuration(FunctionName="custom")
    assert custom["Runtime"] == "provided.al2023"


def test_unknown_function_is_not_found(lambda_client) -> None:
    with pytest.raises(ClientError) as info:
        lambda_client.get_function(FunctionName="nope")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
