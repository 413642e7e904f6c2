"""The upload side of the fake chat.qwen.ai (§7): STS grants, the OSS bucket, document parsing, ``files[]``.

What this module owns: ``getstsToken`` in both generations (v2 wrapped answer,
v1 flat), an Aliyun OSS endpoint served path-style (``PUT /<bucket>/<file_path>``)
that verifies the OSS V4 signature (``OSS4-HMAC-SHA256``) with the grant's fake
STS secret and security token, checks the ``Content-Type`` and keeps the exact
bytes; ``files/parse`` with ``parse/status`` polling (pending, then the scenario's
outcome); and the check the completion endpoint applies to ``messages[0].files``.
Its switches are the :class:`UploadScenario` fields, which :class:`Scenario`
inherits; :class:`UploadsMixin` is mixed into :class:`FakeQwen`.

The V4 verifier is written here from the protocol reference on purpose, not
imported from the proxy: the site and its client must not share a bug.
"""
from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from tests.fake_qwen.wire import INVALID_INPUT_DETAILS, created_event, detail_response, fail_response, json_response, ok_response, new_request_id

if TYPE_CHECKING:
    from tests.fake_qwen.server import Scenario

OSS_BUCKET = "qwen-webui-prod"
OSS_REGION = "oss-ap-southeast-1"  # the STS answer's spelling; the V4 scope drops "oss-" (§7.1)
OSS_ENDPOINT = "oss-accelerate.aliyuncs.com"
STS_FILETYPES = frozenset({"image", "video", "audio", "file", "document"})
PARSE_READY = frozenset({"success", "parsed", "done", "completed"})
PARSE_FAILED = frozenset({"failed", "error"})
PARSE_ERROR_MSG = "文档解析失败：文件已损坏或格式不受支持。"
STS_RATE_DETAILS = "Request rate limit exceeded, please try again later."
FILE_CLASSES = {"image": "vision", "file": "document", "audio": "audio", "video": "video"}
MAX_SKEW = 15 * 60  # OSS refuses a request dated further than this from its clock
UPLOAD_FAULT_ENDPOINTS = frozenset({"uploads", "parse"})
OSS_FAULTS = frozenset({"access_denied", "internal_error", "request_time_skewed"})
UPLOAD_ROUTES: tuple[tuple[str, str, str, str], ...] = (  # (method, pattern, handler, fault kind)
    ("POST", "/api/v2/files/getstsToken", "sts_v2", "uploads"),
    ("POST", "/api/v1/files/getstsToken", "sts_v1", "uploads"),
    ("POST", "/api/v2/files/parse", "parse", "parse"),
    ("POST", "/api/v2/files/parse/status", "parse_status", "parse"),
    ("PUT", "/(?P<bucket>qwen-[a-z0-9-]+)/(?P<key>.+)", "oss_put", "oss"),
)


@dataclass
class UploadScenario:
    """The upload switches of :class:`Scenario`; defaults are the measured site."""

    sts_v2_available: bool = True
    sts_v1_available: bool = True
    sts_limit: int | None = 20  # grants per account per rolling window, then RateLimited (§7.1, R10)
    sts_window: float = 75.0
    sts_omit: tuple[str, ...] = ()  # grant fields left out of the answer (a peer's "STS lacked fields" bug)
    oss_fault: str | None = None  # one of OSS_FAULTS: every PUT gets that OSS error
    parse_polls: int = 2  # "pending" answers before the outcome
    parse_result: str = "success"  # final parse status: a ready word, "failed" or "error"
    parse_outage: bool = False  # R14's measured outage shapes on parse and parse/status
    upload_latency: float = 0.0  # seconds added to each getstsToken and PUT, like a real round trip

    def _check_uploads(self) -> list[tuple[bool, str]]:
        return [
            (self.oss_fault is None or self.oss_fault in OSS_FAULTS, f"unknown oss_fault {self.oss_fault!r}"),
            (self.parse_result in PARSE_READY | PARSE_FAILED, f"bad parse_result {self.parse_result!r}"),
            (self.parse_polls >= 0, "parse_polls must be >= 0"),
            (self.upload_latency >= 0, "upload_latency must be >= 0"),
        ]


@dataclass
class Grant:
    """One getstsToken answer: credentials pinned to one object path (§7.1)."""

    user: str
    file_id: str
    file_path: str
    filename: str
    filetype: str
    filesize: int
    access_key_id: str
    access_key_secret: str
    security_token: str
    issued: float


@dataclass
class StoredObject:
    """What the bucket holds after a verified PUT; tests assert on these."""

    grant: Grant
    data: bytes
    content_type: str
    authorization: str
    parse_polls_left: int | None = None  # None until files/parse is called
    parse_status: str | None = None


@dataclass
class _UploadState:
    grants: dict[str, Grant] = field(default_factory=dict)  # file_path -> grant
    objects: dict[str, StoredObject] = field(default_factory=dict)  # file_path -> object
    sts_calls: dict[str, list[float]] = field(default_factory=dict)  # user -> call times
    refusals: list[str] = field(default_factory=list)  # why files[] were refused (tests read it)


# ---------------------------------------------------------------- OSS V4, the server's side


def _uri_encode(text: str, keep_slash: bool) -> str:
    return urllib.parse.quote(text, safe="/" if keep_slash else "")


def _auth_fields(header: str) -> dict[str, str] | None:
    """``OSS4-HMAC-SHA256 Credential=…, AdditionalHeaders=…, Signature=…`` → its fields."""
    if not header.startswith("OSS4-HMAC-SHA256 "):
        return None
    pairs = dict(re.findall(r"(\w+)=([^,\s]*)", header[len("OSS4-HMAC-SHA256 "):]))
    return pairs if {"Credential", "Signature"} <= pairs.keys() else None


def v4_signature(request: Request, bucket: str, key: str, secret: str, scope: str, additional: list[str]) -> str:
    """The signature OSS computes for a V4 request (canonical request → string to sign → HMAC chain)."""
    headers = {k.lower(): v.strip() for k, v in request.headers.items()}
    signed = sorted(k for k in headers if k.startswith("x-oss-") or k in ("content-type", "content-md5")
                    or k in additional)
    query = sorted((_uri_encode(k, False), _uri_encode(v, False)) for k, v in request.args.items(multi=True))
    canonical = "\n".join([
        request.method,
        _uri_encode(f"/{bucket}/{key}", True),
        "&".join(f"{k}={v}" if v else k for k, v in query),
        "".join(f"{k}:{headers[k]}\n" for k in signed),
        ";".join(sorted(additional)),
        headers.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD"),
    ])
    date_time = headers.get("x-oss-date", "")
    to_sign = "\n".join(["OSS4-HMAC-SHA256", date_time, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    date, region, product, _ = scope.split("/")
    digest = ("aliyun_v4" + secret).encode()
    for part in (date, region, product, "aliyun_v4_request"):
        digest = hmac.new(digest, part.encode(), hashlib.sha256).digest()
    return hmac.new(digest, to_sign.encode(), hashlib.sha256).hexdigest()


def _oss_error(status: int, code: str, message: str, bucket: str = OSS_BUCKET) -> Response:
    """OSS answers errors in XML, never in the site's JSON envelope."""
    rid = uuid.uuid4().hex[:24].upper()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>{code}</Code>\n'
            f"  <Message>{message}</Message>\n  <RequestId>{rid}</RequestId>\n"
            f"  <HostId>{bucket}.{OSS_ENDPOINT}</HostId>\n</Error>\n")
    return Response(body.encode(), status=status, content_type="application/xml",
                    headers={"x-oss-request-id": rid, "Server": "AliyunOSS"})


def _content_type_fits(filetype: str, content_type: str) -> bool:
    major = content_type.split(";")[0].strip().lower().split("/")[0]
    if not major or content_type.lower().startswith("application/x-www-form-urlencoded"):
        return False
    return filetype not in ("image", "video", "audio") or major == filetype


# ---------------------------------------------------------------- the mixin


class UploadsMixin:
    """Upload routes of :class:`FakeQwen`; state lives in ``self.uploads`` behind the site's lock."""

    _lock: threading.RLock
    _release: threading.Event
    scenario: Scenario
    uploads: _UploadState

    def _user(self, request: Request) -> str: ...  # provided by FakeQwen
    def _sse(self, scenario: Scenario, events: Any, stop_keys: tuple[str, ...] = ()) -> Response: ...

    def _reset_uploads(self) -> None:
        with self._lock:
            self.uploads = _UploadState()

    @property
    def objects(self) -> dict[str, StoredObject]:
        """Stored objects by file path (a copy of the mapping; the objects are live)."""
        with self._lock:
            return dict(self.uploads.objects)

    # -- getstsToken ----------------------------------------------------

    def _h_sts_v2(self, request: Request, scenario: Scenario) -> Response:
        if not scenario.sts_v2_available:
            return detail_response(404, "Not Found")
        answer = self._grant(request, scenario)
        return answer if isinstance(answer, Response) else ok_response(answer)

    def _h_sts_v1(self, request: Request, scenario: Scenario) -> Response:
        if not scenario.sts_v1_available:
            return detail_response(404, "Not Found")
        answer = self._grant(request, scenario)
        return answer if isinstance(answer, Response) else json_response(answer)  # flat: no envelope

    def _grant(self, request: Request, scenario: Scenario) -> dict | Response:
        user = self._user(request)
        self._release.wait(scenario.upload_latency)  # interruptible by reset()/release_stalls()
        body = request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        filename, filetype = body.get("filename"), body.get("filetype")
        try:
            filesize = int(body.get("filesize"))
        except (TypeError, ValueError):
            filesize = -1
        if not (isinstance(filename, str) and filename and filetype in STS_FILETYPES and filesize > 0):
            return fail_response("Bad_Request", "Invalid file information!")
        now = time.time()
        with self._lock:
            calls = [t for t in self.uploads.sts_calls.get(user, []) if now - t < scenario.sts_window]
            if scenario.sts_limit is not None and len(calls) >= scenario.sts_limit:
                return fail_response("RateLimited", STS_RATE_DETAILS)
            self.uploads.sts_calls[user] = calls + [now]
            file_id = new_request_id()
            grant = Grant(user, file_id, f"{user}/{file_id}_{filename}", filename, filetype, filesize,
                          "STS.FAKE" + uuid.uuid4().hex[:20].upper(), "fake-sts-secret-" + uuid.uuid4().hex,
                          "FAKE-SECURITY-TOKEN-" + uuid.uuid4().hex, now)
            self.uploads.grants[grant.file_path] = grant
        answer = {"access_key_id": grant.access_key_id, "access_key_secret": grant.access_key_secret,
                  "security_token": grant.security_token, "bucketname": OSS_BUCKET, "region": OSS_REGION,
                  "endpoint": OSS_ENDPOINT, "file_path": grant.file_path,
                  "file_url": self._file_url(grant), "file_id": file_id}
        return {k: v for k, v in answer.items() if k not in scenario.sts_omit}

    @staticmethod
    def _file_url(grant: Grant) -> str:
        """The pre-signed GET URL the site hands out (valid ~300 s; the signature is not checked here)."""
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(grant.issued))
        query = urllib.parse.urlencode({
            "x-oss-credential": f"{grant.access_key_id}/{date[:8]}/ap-southeast-1/oss/aliyun_v4_request",
            "x-oss-date": date, "x-oss-expires": "300", "x-oss-signature-version": "OSS4-HMAC-SHA256",
            "x-oss-signature": hashlib.sha256(grant.file_path.encode()).hexdigest()})
        return f"https://{OSS_BUCKET}.{OSS_ENDPOINT}/{_uri_encode(grant.file_path, True)}?{query}"

    # -- the bucket -----------------------------------------------------

    def _h_oss_put(self, request: Request, scenario: Scenario, bucket: str, key: str) -> Response:
        if scenario.oss_fault == "access_denied":
            return _oss_error(403, "AccessDenied", "You have no right to access this object because of bucket acl.")
        if scenario.oss_fault == "internal_error":
            return _oss_error(500, "InternalError", "We encountered an internal error. Please try again.")
        if bucket != OSS_BUCKET:
            return _oss_error(404, "NoSuchBucket", "The specified bucket does not exist.", bucket)
        self._release.wait(scenario.upload_latency)
        with self._lock:
            grant = self.uploads.grants.get(key)
        refusal = self._verify_put(request, bucket, key, grant, scenario)
        if refusal is not None:
            return refusal
        assert grant is not None
        data = request.get_data(cache=True)
        stored = StoredObject(grant, data, request.headers.get("Content-Type", ""),
                              request.headers.get("Authorization", ""))
        with self._lock:
            self.uploads.objects[key] = stored
        etag = '"' + hashlib.md5(data).hexdigest().upper() + '"'
        return Response(b"", status=200, headers={"ETag": etag, "x-oss-request-id": uuid.uuid4().hex[:24].upper(),
                                                  "Server": "AliyunOSS"})

    def _verify_put(self, request: Request, bucket: str, key: str, grant: Grant | None,
                    scenario: Scenario) -> Response | None:
        """OSS's checks, in its order: auth form, key id, token, policy, clock, signature, then our Content-Type."""
        fields_ = _auth_fields(request.headers.get("Authorization", ""))
        if fields_ is None:
            return _oss_error(403, "AccessDenied", "Authorization header is missing or not OSS4-HMAC-SHA256.")
        ak, _, scope = fields_["Credential"].partition("/")
        with self._lock:
            owner = next((g for g in self.uploads.grants.values() if g.access_key_id == ak), None)
        if owner is None:
            return _oss_error(403, "InvalidAccessKeyId",
                              "The OSS Access Key Id you provided does not exist in our records.")
        if request.headers.get("x-oss-security-token") != owner.security_token:
            return _oss_error(403, "InvalidSecurityToken", "The security token you provided is invalid.")
        if grant is None or grant is not owner:
            return _oss_error(403, "AccessDenied", "You are forbidden to oss:PutObject by the SessionPolicy.")
        date_time = request.headers.get("x-oss-date", "")
        try:
            skew = abs(time.time() - calendar.timegm(time.strptime(date_time, "%Y%m%dT%H%M%SZ")))
        except ValueError:
            return _oss_error(403, "AccessDenied", "x-oss-date is missing or malformed.")
        if skew > MAX_SKEW or scenario.oss_fault == "request_time_skewed":
            return _oss_error(403, "RequestTimeTooSkewed",
                              "The difference between the request time and the current time is too large.")
        if "x-oss-content-sha256" not in request.headers:
            return _oss_error(400, "InvalidArgument", "x-oss-content-sha256 is required for OSS4-HMAC-SHA256.")
        scope_parts = scope.split("/")
        additional = [h.lower() for h in fields_.get("AdditionalHeaders", "").split(";") if h]
        if (len(scope_parts) != 4 or scope_parts[0] != date_time[:8] or scope_parts[1] != OSS_REGION[4:]
                or scope_parts[2:] != ["oss", "aliyun_v4_request"]):
            return _oss_error(403, "SignatureDoesNotMatch", f"Invalid credential scope {scope!r}.")
        expected = v4_signature(request, bucket, key, owner.access_key_secret, scope, additional)
        if not hmac.compare_digest(expected, fields_["Signature"]):
            return _oss_error(403, "SignatureDoesNotMatch",
                              "The request signature we calculated does not match the signature you provided.")
        payload_hash = request.headers["x-oss-content-sha256"]
        body_hash = hashlib.sha256(request.get_data(cache=True)).hexdigest()
        if payload_hash not in ("UNSIGNED-PAYLOAD", body_hash):
            return _oss_error(400, "InvalidDigest",
                              "The x-oss-content-sha256 you specified did not match what we received.")
        if not _content_type_fits(grant.filetype, request.headers.get("Content-Type", "")):
            return _oss_error(400, "InvalidArgument", f"Content-Type does not fit a {grant.filetype} upload.")
        return None

    # -- parsing ----------------------------------------------------------

    def _h_parse(self, request: Request, scenario: Scenario) -> Response:
        user = self._user(request)
        body = request.get_json(silent=True)
        file_id = body.get("file_id") if isinstance(body, dict) else None
        stored = self._stored_by_id(user, file_id)
        if stored is None:
            return fail_response("Not_Found", "File not found")
        if scenario.parse_outage:
            return json_response({"success": True, "request_id": new_request_id(), "data": {"code": "Internal_Server_Error"}})
        with self._lock:
            stored.parse_polls_left = scenario.parse_polls
        return ok_response({})

    def _h_parse_status(self, request: Request, scenario: Scenario) -> Response:
        user = self._user(request)
        if scenario.parse_outage:
            return fail_response("Internal_Server_Error", "")
        body = request.get_json(silent=True)
        ids = body.get("file_id_list") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids:
            return fail_response("Bad_Request", "RequestValidationError: Field 'file_id_list': Field required")
        rows = []
        for file_id in ids:
            stored = self._stored_by_id(user, file_id)
            if stored is None or stored.parse_polls_left is None:
                rows.append({"file_id": file_id, "status": "not_found"})
                continue
            rows.append({"file_id": file_id, **self._next_parse_status(stored, scenario)})
        return ok_response(rows)

    def _next_parse_status(self, stored: StoredObject, scenario: Scenario) -> dict:
        with self._lock:
            if stored.parse_polls_left:
                stored.parse_polls_left -= 1
                return {"status": "pending"}
            stored.parse_status = scenario.parse_result
        if scenario.parse_result in PARSE_FAILED:
            return {"status": scenario.parse_result, "error_msg": PARSE_ERROR_MSG}
        return {"status": scenario.parse_result}

    def _stored_by_id(self, user: str, file_id: Any) -> StoredObject | None:
        with self._lock:
            return next((o for o in self.uploads.objects.values()
                         if o.grant.file_id == file_id and o.grant.user == user), None)

    # -- files[] in a completion -----------------------------------------------

    def _files_refusal(self, request: Request, scenario: Scenario, message: dict) -> Response | None:
        """The site's answer to unusable attachments: ``invalid_input`` inside a 200 stream (§7.4)."""
        files = message.get("files", [])
        problem = self._files_problem(self._user(request), files)
        if problem is None:
            return None
        with self._lock:
            self.uploads.refusals.append(problem)
        chat_id = request.args.get("chat_id") or new_request_id()
        frames = [created_event(chat_id, str(message.get("fid") or new_request_id()), new_request_id()),
                  {"error": {"code": "invalid_input", "details": INVALID_INPUT_DETAILS}}]
        return self._sse(scenario, frames)

    def _files_problem(self, user: str, files: Any) -> str | None:
        """Why these ``files[]`` entries would be refused, or None: shape, ownership, parse, limits (§7.4)."""
        if not isinstance(files, list):
            return "files is not a list"
        kinds: list[str] = []
        for entry in files:
            if not isinstance(entry, dict) or entry.get("type") not in FILE_CLASSES:
                return "entry without a known type"
            kind = entry["type"]
            if "file_class" in entry and entry["file_class"] != FILE_CLASSES[kind]:
                return f"file_class {entry['file_class']!r} does not fit type {kind!r}"
            url = entry.get("url")
            if not isinstance(url, str) or not url:
                return "entry without a url"
            stored = self._object_for_url(url)
            if stored is None or stored.grant.user != user:
                return "url is not an upload of this account"  # third-party URLs are refused (§7.4)
            if "id" in entry and entry["id"] != stored.grant.file_id:
                return "id does not match the url"
            if kind == "file" and stored.parse_status not in PARSE_READY:
                return "document was not parsed"
            kinds.append(kind)
        if len(set(kinds)) > 1 and {"video", "audio"} & set(kinds):
            return "media of different kinds in one turn"
        limits = {"image": 5, "file": 5, "audio": 1, "video": 1}
        if any(kinds.count(k) > n for k, n in limits.items()):
            return "too many attachments of one kind"
        return None

    def _object_for_url(self, url: str) -> StoredObject | None:
        """The stored object a URL names: signed or unsigned, by its object path."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
        with self._lock:
            return self.uploads.objects.get(path)
