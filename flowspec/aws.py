"""boto3 clients from the standard credential chain, and AWS errors as messages that say what to do.

Shared by the `s3` storage and the `fargate-task` environment. Credentials are never taken from a
spec: boto3 finds them in the environment (`AWS_ACCESS_KEY_ID`...), the named `profile` of the
shared configuration, or a role (instance profile, task role, web identity). `endpoint_url`
and `region`, when given, apply to every client; otherwise boto3's own settings (`AWS_REGION`,
`AWS_ENDPOINT_URL`, the profile) apply. Retries follow botocore's settings (`AWS_MAX_ATTEMPTS`,
`AWS_RETRY_MODE`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

from flowspec.errors import FlowspecError, require

CREDENTIALS_HINT = ("give AWS credentials through the standard chain: AWS_ACCESS_KEY_ID and"
                    " AWS_SECRET_ACCESS_KEY in the environment, a `profile` (or AWS_PROFILE) from the"
                    " shared configuration, or a role of the machine or task that runs flowspec")
DENIED = {"AccessDenied", "AccessDeniedException", "Forbidden", "403", "UnauthorizedOperation",
          "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
          "InvalidClientTokenId", "UnrecognizedClientException", "AuthFailure", "InvalidToken"}


class AWSError(FlowspecError):
    """An AWS call that failed, said in words; `code` is AWS's error code (or a botocore class name)."""

    def __init__(self, message: str, hint: str | None = None, code: str = "") -> None:
        super().__init__(message, hint)
        self.code = code


class Session:
    """Clients for one part of a spec (`what`, e.g. "storage" or "environment"), all with the same
    profile, region and endpoint."""

    def __init__(self, what: str, profile: str | None = None, region: str | None = None,
                 endpoint_url: str | None = None) -> None:
        self.what, self.profile, self.region, self.endpoint_url = what, profile, region, endpoint_url
        self._session = None
        self._clients: dict[str, object] = {}

    def client(self, service: str):
        if service in self._clients:
            return self._clients[service]
        boto3 = require("boto3", "aws", f"the {self.what} on AWS")
        import botocore.exceptions as bx
        from botocore.config import Config

        try:
            if self._session is None:
                self._session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
            made = self._session.client(service, endpoint_url=self.endpoint_url or None, config=_config(Config))
        except bx.ProfileNotFound:
            raise AWSError(f"{self.what}: the AWS profile '{self.profile}' is not in the shared AWS configuration",
                           "add it to ~/.aws/config (or the file AWS_CONFIG_FILE names), or fix `profile`",
                           "ProfileNotFound") from None
        except bx.NoRegionError:
            raise AWSError(f"{self.what}: no AWS region is configured for {service}",
                           f"set `region` in the {self.what} section, AWS_REGION, or a region in the profile",
                           "NoRegionError") from None
        except (bx.BotoCoreError, ValueError) as exc:  # a malformed endpoint URL or configuration file
            raise AWSError(f"{self.what}: cannot make an AWS {service} client: {exc}",
                           "check endpoint_url / AWS_ENDPOINT_URL and the shared AWS configuration",
                           type(exc).__name__) from None
        self._clients[service] = made
        return made


def _config(config_class):
    try:  # flowspec checks what it loads itself, and names both digests when they differ
        return config_class(connect_timeout=10, read_timeout=60, response_checksum_validation="when_required")
    except TypeError:  # botocore before 1.36 validates nothing unasked
        return config_class(connect_timeout=10, read_timeout=60)


@contextlib.contextmanager
def translated(action: str, permission: str, endpoint: str | None = None,
               missing: dict[str, tuple[str, str]] | None = None) -> Iterator[None]:
    """Turn botocore's exceptions raised inside into an AWSError that names `action` (what flowspec
    was doing), the IAM `permission` it needed, and the next step. `missing` maps AWS error codes
    to (message, hint) for "not found" answers that the caller can name better."""
    bx = require("botocore.exceptions", "aws", "AWS")

    try:
        yield
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        text = error.get("Message") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        if missing and code in missing:
            message, hint = missing[code]
            raise AWSError(f"{action}: {message}", hint, code) from None
        if code in DENIED:
            raise AWSError(f"{action}: access denied ({code}: {text})",
                           f"the credentials in use need the IAM permission {permission}; check the"
                           " policy of the user or role (the AWS guide of flowspec lists each call's permission)",
                           code) from None
        raise AWSError(f"{action}: AWS answered {code}: {text}", None, code) from None
    except (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError) as exc:
        raise AWSError(f"{action}: no usable AWS credentials ({exc})", CREDENTIALS_HINT, type(exc).__name__) from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError) as exc:
        endpoint = endpoint or _origin(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
        raise AWSError(f"{action}: cannot reach the AWS endpoint {endpoint or ''}".rstrip() + f" ({exc})",
                       "check endpoint_url / AWS_ENDPOINT_URL and the region, and that the network allows it",
                       type(exc).__name__) from None
    except bx.ReadTimeoutError as exc:
        raise AWSError(f"{action}: the AWS endpoint did not answer in time ({exc})",
                       "try again; if it persists, check the endpoint and the network", "ReadTimeoutError") from None
    except bx.ParamValidationError as exc:
        raise AWSError(f"{action}: AWS refuses the request's arguments: {exc}",
                       "fix the arguments in the spec (see the AWS API reference of this call)",
                       "ParamValidationError") from None
    except bx.BotoCoreError as exc:
        raise AWSError(f"{action}: {exc}", None, type(exc).__name__) from None


def _origin(url: str) -> str:
    """scheme://host:port of a URL, without user, password or path."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") if parts.hostname else ""
    except ValueError:
        return ""


def endpoint_of(client) -> str:
    """The endpoint a client talks to, without any user:password part."""
    url = urlsplit(client.meta.endpoint_url)
    return url._replace(netloc=url.hostname + (f":{url.port}" if url.port else "")).geturl()


def has_userinfo(url: str) -> bool:
    """Does a URL carry a user name or password (which would be a credential in a spec)?"""
    try:
        return bool(urlsplit(url).username or urlsplit(url).password)
    except ValueError:
        return False
