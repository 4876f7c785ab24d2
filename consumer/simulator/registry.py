"""A small Confluent-Schema-Registry-compatible API (served under `/registry`) for Avro serdes.

Same schema text (modulo JSON formatting) → same global id; subjects keep ordered
versions; registration and the compatibility endpoint check the configured level
(BACKWARD by default) with Avro resolution rules. Optional HTTP basic or bearer auth
(`require_auth`), as a secured registry runs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from consumer.simulator.compatibility import InvalidSchema, can_read, parse_avro

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
LEVELS = frozenset(
    {
        "NONE",
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
    }
)


class RegistryError(Exception):
    """An error answer: HTTP `status` with `{"error_code", "message"}`."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def _canonical(parsed_json: Any) -> str:
    return json.dumps(parsed_json, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class _Stored:
    id: int
    text: str
    parsed: Any


class SchemaRegistry:
    """Schemas by global id and subjects with versions; thread-safe."""

    def __init__(self, compatibility: str = "BACKWARD") -> None:
        self._lock = threading.Lock()
        self._by_id: dict[int, _Stored] = {}
        self._id_by_canonical: dict[str, int] = {}
        self._subjects: dict[str, list[int]] = {}
        self._levels: dict[str, str] = {}
        self.compatibility = compatibility
        self._basic: tuple[str, str] | None = None
        self._bearer: str | None = None
        # An outage: every request answers this status (500, 503 ...) while it is set.
        self.outage_status: int | None = None

    def require_auth(
        self, *, basic: tuple[str, str] | None = None, bearer: str | None = None
    ) -> None:
        """From now on answer only requests with these credentials (None: open again)."""
        with self._lock:
            self._basic, self._bearer = basic, bearer

    def _authorized(self, authorization: str) -> bool:
        with self._lock:
            basic, bearer = self._basic, self._bearer
        if basic is None and bearer is None:
            return True
        scheme, _, credentials = authorization.strip().partition(" ")
        if basic is not None and scheme.lower() == "basic":
            try:
                user, _, password = (
                    base64.b64decode(credentials, validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                return False
            return hmac.compare_digest(f"{user}:{password}", f"{basic[0]}:{basic[1]}")
        if bearer is not None and scheme.lower() == "bearer":
            return hmac.compare_digest(credentials.strip(), bearer)
        return False

    # -- operations ------------------------------------------------------------------------

    def register(self, subject: str, schema_text: str) -> int:
        """Register under `subject`; an already registered schema keeps its id and version."""
        parsed, canonical = self._parse(schema_text)
        with self._lock:
            known_id = self._id_by_canonical.get(canonical)
            versions = self._subjects.get(subject, [])
            if known_id is not None and known_id in versions:
                return known_id
            if versions and not self._compatible_with_history(subject, parsed, versions):
                raise RegistryError(
                    409,
                    409,
                    "Schema being registered is incompatible with an earlier schema for "
                    f'subject "{subject}"',
                )
            if known_id is None:
                known_id = len(self._by_id) + 1
                self._by_id[known_id] = _Stored(known_id, schema_text, parsed)
                self._id_by_canonical[canonical] = known_id
            self._subjects.setdefault(subject, []).append(known_id)
            return known_id

    def schema_by_id(self, schema_id: int) -> str:
        with self._lock:
            stored = self._by_id.get(schema_id)
        if stored is None:
            raise RegistryError(404, 40403, "Schema not found")
        return stored.text

    def subjects(self) -> list[str]:
        with self._lock:
            return sorted(self._subjects)

    def versions(self, subject: str) -> list[int]:
        with self._lock:
            ids = self._subjects.get(subject)
        if ids is None:
            raise _subject_not_found(subject)
        return list(range(1, len(ids) + 1))

    def version(self, subject: str, version: str) -> dict[str, Any]:
        with self._lock:
            ids = self._subjects.get(subject)
            if ids is None:
                raise _subject_not_found(subject)
            number = self._version_number(version, len(ids))
            stored = self._by_id[ids[number - 1]]
        return {"subject": subject, "version": number, "id": stored.id, "schema": stored.text}

    def lookup(self, subject: str, schema_text: str) -> dict[str, Any]:
        """Is this schema registered under the subject? (POST /subjects/{subject})."""
        _, canonical = self._parse(schema_text)
        with self._lock:
            ids = self._subjects.get(subject)
            if ids is None:
                raise _subject_not_found(subject)
            schema_id = self._id_by_canonical.get(canonical)
            if schema_id is None or schema_id not in ids:
                raise RegistryError(404, 40403, "Schema not found")
            stored = self._by_id[schema_id]
            number = ids.index(schema_id) + 1
        return {"subject": subject, "version": number, "id": schema_id, "schema": stored.text}

    def is_compatible(self, subject: str, version: str, schema_text: str) -> bool:
        """The candidate against one registered version, in the subject's level's direction."""
        parsed, _ = self._parse(schema_text)
        with self._lock:
            ids = self._subjects.get(subject)
            if ids is None:
                raise _subject_not_found(subject)
            number = self._version_number(version, len(ids))
            existing = self._by_id[ids[number - 1]].parsed
            level = self._levels.get(subject, self.compatibility)
        return self._check(level.removesuffix("_TRANSITIVE"), parsed, existing)

    def level(self, subject: str | None = None) -> str:
        with self._lock:
            if subject is None:
                return self.compatibility
            return self._levels.get(subject, self.compatibility)

    def set_level(self, level: str, subject: str | None = None) -> str:
        if level not in LEVELS:
            raise RegistryError(422, 42203, "Invalid compatibility level")
        with self._lock:
            if subject is None:
                self.compatibility = level
            else:
                self._levels[subject] = level
        return level

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _parse(schema_text: Any) -> tuple[Any, str]:
        if not isinstance(schema_text, str):
            raise RegistryError(422, 42201, "Invalid schema: 'schema' must be a JSON string")
        try:
            parsed = parse_avro(schema_text)
        except InvalidSchema as exc:
            raise RegistryError(422, 42201, f"Invalid schema: {exc}") from exc
        return parsed, _canonical(json.loads(schema_text))

    @staticmethod
    def _version_number(version: str, count: int) -> int:
        if version in ("latest", "-1"):
            return count
        if not version.isdigit() or int(version) < 1:
            raise RegistryError(
                422,
                42202,
                "The specified version is not a valid version id. Allowed values are between "
                '[1, 2^31-1] and the string "latest"',
            )
        if int(version) > count:
            raise RegistryError(404, 40402, "Version not found.")
        return int(version)

    def _compatible_with_history(self, subject: str, parsed: Any, ids: list[int]) -> bool:
        level = self._levels.get(subject, self.compatibility)
        if level == "NONE":
            return True
        against = ids if level.endswith("_TRANSITIVE") else ids[-1:]
        base = level.removesuffix("_TRANSITIVE")
        return all(self._check(base, parsed, self._by_id[i].parsed) for i in against)

    @staticmethod
    def _check(level: str, new: Any, old: Any) -> bool:
        if level == "NONE":
            return True
        backward = can_read(writer=old, reader=new)
        if level == "BACKWARD":
            return backward
        forward = can_read(writer=new, reader=old)
        return forward if level == "FORWARD" else backward and forward

    # -- HTTP-shaped routing (the server only adds transport) -------------------------------

    def route(
        self, http_method: str, path: str, body: bytes, authorization: str = ""
    ) -> tuple[int, Any]:
        """Answer one request under `/registry`; returns (status, JSON-ready payload)."""
        if self.outage_status is not None:
            return self.outage_status, {"error_code": 50003, "message": "Service Unavailable"}
        if not self._authorized(authorization):
            # A secured registry answers 401 to missing or wrong credentials, 403 to a
            # known user without the permission (IBM Event Streams serdes docs,
            # SchemaRegistryAuthException; Apicurio/apicurio-registry issue 2419).
            return 401, {"error_code": 401, "message": "Unauthorized"}
        parts = [unquote(part) for part in path.strip("/").split("/") if part]
        try:
            return 200, self._dispatch(http_method.upper(), parts, body)
        except RegistryError as exc:
            return exc.status, {"error_code": exc.error_code, "message": exc.message}

    def _dispatch(self, verb: str, parts: list[str], body: bytes) -> Any:
        match verb, parts:
            case "GET", []:
                return {}
            case "GET", ["subjects"]:
                return self.subjects()
            case "POST", ["subjects", subject, "versions"]:
                return {"id": self.register(subject, self._schema_field(body))}
            case "POST", ["subjects", subject]:
                return self.lookup(subject, self._schema_field(body))
            case "GET", ["subjects", subject, "versions"]:
                return self.versions(subject)
            case "GET", ["subjects", subject, "versions", version]:
                return self.version(subject, version)
            case "GET", ["subjects", subject, "versions", version, "schema"]:
                return json.loads(self.version(subject, version)["schema"])
            case "GET", ["schemas", "ids", schema_id] if schema_id.isdigit():
                return {"schema": self.schema_by_id(int(schema_id))}
            case "POST", ["compatibility", "subjects", subject, "versions", version]:
                return {
                    "is_compatible": self.is_compatible(subject, version, self._schema_field(body))
                }
            case "GET", ["config"]:
                return {"compatibilityLevel": self.level()}
            case "GET", ["config", subject]:
                return {"compatibilityLevel": self.level(subject)}
            case "PUT", ["config", *rest] if len(rest) <= 1:
                level = self._json(body).get("compatibility")
                return {"compatibility": self.set_level(str(level), rest[0] if rest else None)}
        raise RegistryError(404, 404, "HTTP 404 Not Found")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            decoded = json.loads(body or b"{}")
        except ValueError as exc:
            raise RegistryError(400, 400, "Unexpected character in request body") from exc
        if not isinstance(decoded, dict):
            raise RegistryError(422, 422, "Request body must be a JSON object")
        return decoded

    def _schema_field(self, body: bytes) -> str:
        request = self._json(body)
        schema_type = request.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise RegistryError(422, 42201, f"Invalid schema: unsupported schemaType {schema_type}")
        schema = request.get("schema")
        if not isinstance(schema, str):
            raise RegistryError(422, 42201, "Invalid schema: 'schema' is required")
        return schema
