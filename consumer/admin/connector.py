"""Admin commands: a connector's lifecycle on a portal (`imconnector.register` … `unregister`)
and the bundled Avro schemas against a registry. `consumer.cli` wires them in.

Every Bitrix24 call goes through `BitrixClient.call`, so an expired access token is refreshed
and the call repeated. A failed call prints one line naming the Bitrix24 code and what to do,
and the command exits 1; bad input raises `ConfigError` (exit 2). Tokens and the client
secret are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from confluent_kafka import KafkaException

from consumer.admin.console import PROG, absolute_url, err, out, print_json
from consumer.bitrix.client import BitrixClient
from consumer.bitrix.oauth import MemoryTokenStore, TokenStore
from consumer.errors import (
    AmbiguousError,
    BitrixError,
    ConfigError,
    PermanentError,
    Throttled,
    TransientError,
)
from consumer.redact import redact
from consumer.settings import Settings, load_settings

__all__ = ["register_commands"]

DEFAULT_ICON_COLOR = "#69acc0"
MAX_ICON_BYTES = 64 * 1024
# A speech bubble; COLOR paints the tile behind it (reference §3.1 ICON).
DEFAULT_ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 70 71"><path fill="#FFF" '
    'd="M34.7 14C22.2 14 12 22.6 12 33.2c0 5.6 2.9 10.7 7.5 14.2L17 57l10.3-5.6c2.3.5 4.8.8 '
    '7.4.8 12.5 0 22.7-8.6 22.7-19.2S47.2 14 34.7 14z"/></svg>'
)
_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3}){1,2}")

# What to do about each Bitrix24 / OAuth error code (reference §3, §5.4, §7).
_HINTS: dict[str, str] = {
    "WRONG_AUTH_TYPE": "imconnector methods need an application OAuth token, not a webhook: "
    "set rest_url to the portal's client_endpoint (https://<portal>/rest/), not a "
    "/rest/<user>/<code>/ webhook URL",
    "NOT_ACTIVE_LINE": "the connector is not active on that line: run "
    "'connector activate --connector C --line N' first",
    "ACCESS_DENIED": "the token's user may not modify Open Channel connectors (or REST is not "
    "available on this plan): use the tokens of a portal administrator",
    "INVALID_CREDENTIALS": "the token's user lacks the permission: use the tokens of a portal "
    "administrator",
    "user_access_error": "an administrator restricted the application to other users",
    "insufficient_scope": "the application lacks a scope: request imopenlines and imconnector",
    "ERROR_METHOD_NOT_FOUND": "the portal does not offer this method to the application: check "
    "the imopenlines and imconnector scopes",
    "METHOD_CONFIRM_WAITING": "a portal administrator must confirm the application's access to "
    "this method",
    "METHOD_CONFIRM_DENIED": "a portal administrator denied the application this method",
    "ERROR_ARGUMENT": "a required parameter is missing or empty",
    "QUERY_LIMIT_EXCEEDED": "the portal is throttling requests (leaky bucket): wait a few "
    "seconds and retry",
    "OPERATION_TIME_LIMIT": "the method's 10-minute execution budget is used up: retry later",
    "OVERLOAD_LIMIT": "REST is blocked on this portal for overload: contact Bitrix24 support",
    "PAYMENT_REQUIRED": "the application's paid period is over: no tokens until it is paid",
    "expired_token": "the portal rejected the token even after a refresh: seed a fresh pair "
    "('tokens seed') or reinstall the application",
    "invalid_token": "the portal rejected the token even after a refresh: seed a fresh pair "
    "('tokens seed') or reinstall the application",
    "NO_AUTH_FOUND": "the portal does not know this token: seed a fresh pair ('tokens seed') or "
    "reinstall the application",
    "NO_TOKENS": "set access_token and refresh_token for the portal in IMCONNECTOR_PORTALS, or "
    "use --token-store kafka",
    "invalid_client": "the OAuth server refused client_id/client_secret while refreshing the "
    "token: check them in IMCONNECTOR_PORTALS (or the application is not installed)",
    "invalid_grant": "the refresh token is spent or expired (Bitrix24 rotates it on every "
    "refresh): seed a fresh pair ('tokens seed') or reinstall the application",
    "invalid_request": "the token refresh request was malformed: check client_id and oauth_url",
    "TOKEN_TOPIC_UNAVAILABLE": "the token topic could not be read or written: check "
    "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS and IMCONNECTOR_TOKENS_TOPIC, or use "
    "--token-store settings",
    "APPLICATION_REGISTRATION_ERROR_POINT": "the connector ID must not contain '.'",
    "CONNECTOR_ID_REQUIRED": "give a non-empty --id",
    "NAME_REQUIRED": "give a non-empty --name",
    "ICON_REQUIRED": "the icon (ICON.DATA_IMAGE) is missing: give --icon-file with an SVG",
    "NO_PLACEMENT_HANDLER": "give --placement-handler URL (the connector's settings page)",
    "NO_APPLICATION_ID": "the portal found no application for this token: use the OAuth token "
    "of the application that owns the connector",
    "APPLICATION_REGISTRATION_ERROR": "the portal could not save the connector or its "
    "placement: retry, and check the application's scopes",
    "GENERAL_CONNECTOR_REGISTRATION_ERROR": "the portal refused the registration: check the "
    "parameters",
    "APPLICATION_UNREGISTRATION_ERROR": "this application owns no connector with that ID (an "
    "application can only remove its own): see 'connector list'",
}


# -- shared plumbing ---------------------------------------------------------------------------


def _fail_line(what: str, exc: BitrixError) -> str:
    """One line: the Bitrix24 code, what to do, and the portal's own words when it gave any."""
    code = exc.code or (f"HTTP {exc.http_status}" if exc.http_status else type(exc).__name__)
    text = " ".join(str(exc).split())
    hint = _HINTS.get(exc.code or "")
    if hint is None:
        if isinstance(exc, AmbiguousError):
            hint = "the request may have been applied: check with 'connector status' or "
            hint += "'connector list' before repeating it"
        elif isinstance(exc, Throttled):
            hint = "the portal asked to slow down: retry later"
        elif exc.retriable:
            hint = "the portal did not answer properly: retry"
        else:
            hint = text
    detail = ""
    prefix = f"{exc.code}: "
    if exc.code and hint != text and text.startswith(prefix) and text[len(prefix) :]:
        # The portal's error_description, when the error came from the portal.
        detail = f" (portal: {text[len(prefix) :][:200]})"
    return redact(f"{PROG}: {what} failed: {code} — {hint}{detail}")


def _reports_failures(
    command: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Turn a failed call escaping `command` into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _CallFailed as failed:
            err(_fail_line(failed.method, failed.error))
            return 1

    return run


class _CallFailed(Exception):
    """A call to `method` failed with `error` (raised or reported inside HTTP 200)."""

    def __init__(self, method: str, error: BitrixError) -> None:
        super().__init__(method)
        self.method = method
        self.error = error


@dataclass
class _Target:
    """The portal a command talks to and where its OAuth pair lives."""

    settings: Settings
    portal: str
    store_kind: str
    refreshes: list[str] = field(default_factory=list)


def _target(args: argparse.Namespace) -> _Target:
    settings = load_settings(args.config)
    names = sorted(settings.portals)
    if not names:
        raise ConfigError(
            "no portal is configured: set IMCONNECTOR_PORTALS (JSON) or 'portals' "
            "in the config file"
        )
    if args.portal is None:
        if len(names) > 1:
            raise ConfigError(
                f"several portals are configured ({', '.join(names)}): choose one "
                "with --portal NAME"
            )
        portal = names[0]
    elif args.portal in settings.portals:
        portal = args.portal
    else:
        raise ConfigError(
            f"portal {args.portal!r} is not configured; known portals: {', '.join(names)}"
        )
    config = settings.portals[portal]
    if args.store_kind == "settings" and (
        config.access_token is None or config.refresh_token is None
    ):
        raise ConfigError(
            f"portal {portal!r} has no access_token/refresh_token in "
            "IMCONNECTOR_PORTALS: add the pair, or use --token-store kafka"
        )
    return _Target(settings, portal, args.store_kind)


def _store(target: _Target) -> TokenStore:
    if target.store_kind == "kafka":
        # Shares the service's rotation chain: the newest pair is read from the token topic
        # and a refreshed pair is saved there before it is used.
        from consumer.kafka.tokens import KafkaTokenStore

        return KafkaTokenStore(target.settings)
    return MemoryTokenStore()


async def _call_async(target: _Target, method: str, params: dict[str, Any]) -> Any:
    store = await asyncio.to_thread(_store, target)
    client = BitrixClient(
        {target.portal: target.settings.portals[target.portal]},
        target.settings.http,
        store,
        on_refresh=target.refreshes.append,
    )
    try:
        body = await client.call(target.portal, method, params)
    finally:
        await client.aclose()
    return body.get("result")


def _call(target: _Target, method: str, params: dict[str, Any]) -> Any:
    """Run one REST call to completion and return its `result`; raise `_CallFailed`."""
    try:
        return asyncio.run(_call_async(target, method, params))
    except BitrixError as exc:
        raise _CallFailed(method, exc) from None
    except (KafkaException, TimeoutError) as exc:  # only with --token-store kafka
        reason = " ".join(str(exc).split())[:200]
        error = TransientError(reason, code="TOKEN_TOPIC_UNAVAILABLE")
        raise _CallFailed(method, error) from None
    finally:
        _note_refresh(target)


def _note_refresh(target: _Target) -> None:
    if "ok" not in target.refreshes:
        return
    if target.store_kind == "kafka":
        note = f"saved it to topic {target.settings.tokens_topic}"
    else:
        # Bitrix24 rotates the pair on refresh (reference §7): the configured refresh token
        # is spent, and the new pair dies with this process.
        note = (
            f"the refresh_token configured for portal {target.portal!r} is now spent and "
            "the new pair was not kept; use --token-store kafka to keep it"
        )
    err(f"{PROG}: note: the access token was refreshed; {note}")


def _failure_in_result(method: str, result: Any) -> _CallFailed | None:
    """register/unregister report failure inside HTTP 200: `{"result": false, "error": …}`."""
    if isinstance(result, dict) and result.get("result") is True:
        return None
    body = result if isinstance(result, dict) else {}
    code = str(body.get("error") or "UNEXPECTED_RESULT")
    description = str(body.get("error_description") or f"result was {json.dumps(result)}")
    return _CallFailed(method, PermanentError(f"{code}: {description}", code=code, http_status=200))


def _connector_id(value: str, *, what: str = "connector ID") -> str:
    """The ID as the portal stores it: lowercased, and `.` refused (reference §2, §3.1)."""
    connector = value.strip().lower()
    if not connector:
        raise ConfigError(f"the {what} is empty")
    if "." in connector:
        raise ConfigError(
            f"{what} {value!r} contains '.', which Bitrix24 refuses "
            "(APPLICATION_REGISTRATION_ERROR_POINT): use letters, digits and '_'"
        )
    return connector


def _line(value: int) -> int:
    if value < 1:
        raise ConfigError(f"--line {value} is not an Open Channel id (a positive integer)")
    return value


def _color(value: str, option: str) -> str:
    if not _COLOR.fullmatch(value):
        raise ConfigError(f"{option} {value!r} is not a hex colour such as #69acc0")
    return value


def svg_data_image(svg: str) -> str:
    """The URL-encoded `data:image/svg+xml,…` URI that `ICON.DATA_IMAGE` expects."""
    return "data:image/svg+xml," + quote(svg.strip(), safe="")


def _icon_svg(path: str | None) -> str:
    if path is None:
        return DEFAULT_ICON_SVG
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--icon-file {path} does not exist")
    data = file.read_bytes()
    if len(data) > MAX_ICON_BYTES:
        raise ConfigError(
            f"--icon-file {path} is {len(data)} bytes; keep the SVG under "
            f"{MAX_ICON_BYTES // 1024} KiB (it travels in every register call)"
        )
    try:
        svg = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--icon-file {path} is not UTF-8 text (an SVG is expected)") from None
    if "<svg" not in svg:
        raise ConfigError(f"--icon-file {path} is not an SVG (no <svg> element)")
    return svg


# -- connector commands --------------------------------------------------------------------------

_REGISTER_FLAGS = (
    # (option, Bitrix24 flag, documented default) — reference §3.1
    ("chat-group", "CHAT_GROUP", False),
    ("del-external-messages", "DEL_EXTERNAL_MESSAGES", True),
    ("edit-internal-messages", "EDIT_INTERNAL_MESSAGES", True),
    ("del-internal-messages", "DEL_INTERNAL_MESSAGES", True),
    ("newsletter", "NEWSLETTER", True),
    ("need-system-messages", "NEED_SYSTEM_MESSAGES", True),
    ("need-signature", "NEED_SIGNATURE", True),
)


@_reports_failures
def cmd_register(args: argparse.Namespace) -> int:
    """`connector register`: imconnector.register (also updates a connector of the same ID)."""
    if args.no_local_checks:
        connector, name, handler = args.id, args.name, args.placement_handler
    else:
        connector = _connector_id(args.id)
        name = args.name.strip()
        if not name:
            raise ConfigError("--name is empty: it is the title shown in the Contact Center")
        handler = absolute_url(args.placement_handler, "--placement-handler")
    image = svg_data_image(_icon_svg(args.icon_file))
    icon = {
        "DATA_IMAGE": image,
        "COLOR": _color(args.color, "--color"),
        "SIZE": args.icon_size,
        "POSITION": args.icon_position,
    }
    params: dict[str, Any] = {
        "ID": connector,
        "NAME": name,
        "ICON": icon,
        "PLACEMENT_HANDLER": handler,
    }
    if args.disabled_color is not None:
        params["ICON_DISABLED"] = {**icon, "COLOR": _color(args.disabled_color, "--disabled-color")}
    for option, flag, _ in _REGISTER_FLAGS:
        # Real JSON booleans: the portal ignores anything but exact true/false (§3.1).
        params[flag] = bool(getattr(args, option.replace("-", "_")))
    if args.comment:
        params["COMMENT"] = args.comment
    result = _call(_target(args), "imconnector.register", params)
    if args.json:
        print_json(result)
    failure = _failure_in_result("imconnector.register", result)
    if failure is not None:
        raise failure
    if not args.json:
        out(f"registered connector {connector!r} ({name}); settings page: {handler}")
        out(
            f"next: open it in the Contact Center, then 'connector activate --connector "
            f"{connector} --line N'"
        )
    return 0


def _set_active(args: argparse.Namespace, active: bool) -> int:
    connector, line = _connector_id(args.connector), _line(args.line)
    # ACTIVE must be 1 or 0: any non-empty value activates, so the documented "N" would
    # switch the connector ON (reference §3.2, PHP `!empty`).
    params = {"CONNECTOR": connector, "LINE": line, "ACTIVE": 1 if active else 0}
    result = _call(_target(args), "imconnector.activate", params)
    if args.json:
        print_json(result)
    else:
        state = "active" if active else "inactive"
        out(f"connector {connector!r} is now {state} on line {line}")
    return 0


@_reports_failures
def cmd_activate(args: argparse.Namespace) -> int:
    """`connector activate`: imconnector.activate with ACTIVE=1."""
    return _set_active(args, True)


@_reports_failures
def cmd_deactivate(args: argparse.Namespace) -> int:
    """`connector deactivate`: imconnector.activate with ACTIVE=0 (there is no .deactivate)."""
    return _set_active(args, False)


@_reports_failures
def cmd_status(args: argparse.Namespace) -> int:
    """`connector status`: imconnector.status for one line."""
    connector, line = _connector_id(args.connector), _line(args.line)
    # LINE is always sent: without it the portal answers for line 0, i.e. all false (§3.3).
    result = _call(_target(args), "imconnector.status", {"CONNECTOR": connector, "LINE": line})
    if args.json:
        print_json(result)
        return 0
    body = result if isinstance(result, dict) else {}
    for key in ("LINE", "CONNECTOR", "ERROR", "CONFIGURED", "STATUS"):
        value = body.get(key)
        out(f"{key:<11}{json.dumps(value) if isinstance(value, bool) else value}")
    return 0


@_reports_failures
def cmd_data_set(args: argparse.Namespace) -> int:
    """`connector data-set`: imconnector.connector.data.set for one line."""
    connector, line = _connector_id(args.connector), _line(args.line)
    data = {
        key: value
        for key, value in (
            ("ID", args.id),
            ("URL", args.url),
            ("URL_IM", args.url_im),
            ("NAME", args.name),
        )
        if value
    }
    if not data:
        raise ConfigError("give at least one of --id, --url, --url-im, --name")
    for key, option in (("URL", "--url"), ("URL_IM", "--url-im")):
        if key in data:
            absolute_url(data[key], option)
    params = {"CONNECTOR": connector, "LINE": line, "DATA": data}
    result = _call(_target(args), "imconnector.connector.data.set", params)
    if args.json:
        print_json(result)
    else:
        out(
            f"stored {', '.join(data)} for connector {connector!r} on line {line} "
            "(keys you did not give keep their stored values)"
        )
    return 0


@_reports_failures
def cmd_list(args: argparse.Namespace) -> int:
    """`connector list`: imconnector.list."""
    result = _call(_target(args), "imconnector.list", {})
    if args.json:
        print_json(result)
        return 0
    connectors = result if isinstance(result, dict) else {}
    if not connectors:
        out("no connectors")
        return 0
    width = max(len("ID"), *(len(str(key)) for key in connectors))
    out(f"{'ID':<{width}}  NAME")
    for key in sorted(connectors):
        out(f"{key:<{width}}  {connectors[key]}")
    return 0


@_reports_failures
def cmd_unregister(args: argparse.Namespace) -> int:
    """`connector unregister`: imconnector.unregister (its status on every line goes too)."""
    connector = _connector_id(args.id)
    result = _call(_target(args), "imconnector.unregister", {"ID": connector})
    if args.json:
        print_json(result)
    failure = _failure_in_result("imconnector.unregister", result)
    if failure is not None:
        raise failure
    if not args.json:
        out(f"unregistered connector {connector!r} (and its status on every line)")
    return 0


# -- argparse wiring ---------------------------------------------------------------------------


def _portal_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML config file (IMCONNECTOR_* env vars override it)")
    common.add_argument("--portal", help="a key of IMCONNECTOR_PORTALS (default: the only one)")
    common.add_argument("--json", action="store_true", help="print the raw `result` as JSON")
    common.add_argument(
        "--token-store",
        dest="store_kind",
        choices=("settings", "kafka"),
        default="settings",
        help="where the OAuth pair comes from: the portal's access_token/refresh_token "
        "settings (default; a refreshed pair is not kept), or the service's token topic "
        "(a refreshed pair is saved there)",
    )
    return common


def _line_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connector", required=True, help="connector ID")
    parser.add_argument("--line", required=True, type=int, help="Open Channel (line) id")


def register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `connector …` to the CLI's sub-commands."""
    common = _portal_options()

    connector = subparsers.add_parser("connector", help="a connector's lifecycle on a portal")
    commands = connector.add_subparsers(dest="connector_command", required=True)

    register = commands.add_parser(
        "register", parents=[common], help="imconnector.register (or update the same ID)"
    )
    register.add_argument("--id", required=True, help="connector ID (lowercased; no '.')")
    register.add_argument("--name", required=True, help="title in the Contact Center")
    register.add_argument(
        "--placement-handler",
        required=True,
        metavar="URL",
        help="the connector's settings page (placement SETTING_CONNECTOR)",
    )
    register.add_argument("--icon-file", help="SVG icon (default: a built-in chat bubble)")
    register.add_argument("--color", default=DEFAULT_ICON_COLOR, help="icon tile colour")
    register.add_argument("--icon-size", default="90%")
    register.add_argument("--icon-position", default="center")
    register.add_argument(
        "--disabled-color", help="also send ICON_DISABLED: the same icon on this colour"
    )
    register.add_argument("--comment")
    for option, flag, default in _REGISTER_FLAGS:
        register.add_argument(
            f"--{option}",
            action=argparse.BooleanOptionalAction,
            default=default,
            help=f"{flag} (default: {str(default).lower()})",
        )
    # Sends ID/NAME/PLACEMENT_HANDLER untouched, so the portal's own validation answers.
    register.add_argument("--no-local-checks", action="store_true", help=argparse.SUPPRESS)
    register.set_defaults(func=cmd_register)

    activate = commands.add_parser(
        "activate", parents=[common], help="turn the connector on for a line (ACTIVE=1)"
    )
    _line_options(activate)
    activate.set_defaults(func=cmd_activate)

    deactivate = commands.add_parser(
        "deactivate", parents=[common], help="turn the connector off for a line (ACTIVE=0)"
    )
    _line_options(deactivate)
    deactivate.set_defaults(func=cmd_deactivate)

    status = commands.add_parser(
        "status", parents=[common], help="LINE, CONNECTOR, ERROR, CONFIGURED, STATUS of a line"
    )
    _line_options(status)
    status.set_defaults(func=cmd_status)

    data_set = commands.add_parser(
        "data-set",
        parents=[common],
        help="imconnector.connector.data.set (merges: omitted keys keep their values)",
    )
    _line_options(data_set)
    data_set.add_argument("--id", help="external channel id")
    data_set.add_argument("--url", help="link to the chat or channel")
    data_set.add_argument("--url-im", help="link for the operator UI")
    data_set.add_argument("--name", help="display name of the channel")
    data_set.set_defaults(func=cmd_data_set)

    listing = commands.add_parser("list", parents=[common], help="imconnector.list")
    listing.set_defaults(func=cmd_list)

    unregister = commands.add_parser(
        "unregister", parents=[common], help="imconnector.unregister (removes it from every line)"
    )
    unregister.add_argument("--id", required=True, help="connector ID")
    unregister.set_defaults(func=cmd_unregister)
