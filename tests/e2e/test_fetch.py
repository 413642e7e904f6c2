"""The URL fetcher (``routes/fetch.py``): the address guard, redirects, limits and content types, over loopback."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from errors import InvalidRequest
from routes.fetch import RemoteFetcher, is_public
from tests.helpers import MediaHost

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
LIMIT = 1024 * 1024


@pytest.fixture()
def host() -> Iterator[MediaHost]:
    with MediaHost() as server:
        yield server


def loopback_is_public(ip) -> bool:
    """Pretend 127.0.0.1 is a public server, so the guard can be tested against a real loopback host."""
    return str(ip) == "127.0.0.1" or is_public(ip)


def fetcher(**kwargs) -> RemoteFetcher:
    kwargs.setdefault("is_allowed", loopback_is_public)
    return RemoteFetcher(**kwargs)


def fetch(f: RemoteFetcher, url: str, expect: str = "image", max_bytes: int = LIMIT):
    return f.fetch(url, expect=expect, max_bytes=max_bytes, param="messages[0].content[1]")


def refused(f: RemoteFetcher, url: str, **kwargs) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fetch(f, url, **kwargs)
    assert info.value.status == 400 and info.value.param == "messages[0].content[1]"
    return info.value


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("47.74.0.1", True),
    ("127.0.0.1", False), ("127.8.9.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.100.100.200", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("::1", False), ("fd00:ec2::254", False), ("fe80::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("::", False), ("240.0.0.1", False),
])
def test_is_public(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


def test_fetches_bytes_and_type(host):
    url = host.serve("/cat.png", PNG, content_type="image/png; charset=binary")
    got = fetch(fetcher(), url)
    assert got.data == PNG and got.content_type.startswith("image/png") and got.url == url


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1/x.png", "http://localhost:1/x.png", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:1/x.png", "http://10.0.0.8/x.png", "http://100.100.100.200/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/", "http://2130706433/x.png",
])
def test_private_addresses_are_refused_before_connecting(url):
    error = refused(RemoteFetcher(), url)
    assert error.code in {"url_not_allowed", "media_url_unreachable"}
    if error.code == "url_not_allowed":
        assert "data URL" in error.message


def test_a_host_with_any_private_address_is_refused(host):
    f = fetcher(resolver=lambda h, p: ["127.0.0.1", "10.0.0.1"])
    error = refused(f, f"http://cdn.example:{host.port}/cat.png")
    assert error.code == "url_not_allowed" and "10.0.0.1" in error.message
    assert host.seen == []


def test_connects_to_the_checked_address_with_the_original_host(host):
    """No second DNS lookup: a rebinding DNS server gets one chance, and that answer was checked."""
    answers = iter([["127.0.0.1"]])  # a second lookup would raise StopIteration
    host.serve("/cat.png", PNG)
    got = fetch(fetcher(resolver=lambda h, p: next(answers)), f"http://cdn.example:{host.port}/cat.png?v=1")
    assert got.data == PNG
    assert host.seen == [("/cat.png?v=1", host.seen[0][1])] and host.seen[0][1]["Host"] == f"cdn.example:{host.port}"


def test_redirects_are_followed_and_each_hop_checked(host):
    host.serve("/final.png", PNG)
    host.serve("/hop", headers={"Location": "/final.png"}, status=302, content_type="text/html")
    assert fetch(fetcher(), host.url + "/hop").data == PNG
    host.serve("/evil", headers={"Location": "http://169.254.169.254/latest/meta-data/"}, status=301)
    assert refused(fetcher(), host.url + "/evil").code == "url_not_allowed"


def test_redirect_limit(host):
    for n in range(5):
        host.serve(f"/r{n}", headers={"Location": f"/r{n + 1}"}, status=307)
    host.serve("/r5", PNG)
    assert "redirected more than 3 times" in refused(fetcher(), host.url + "/r0").message
    assert fetch(fetcher(), host.url + "/r2").data == PNG


@pytest.mark.parametrize(("served", "code", "words"), [
    ({"body": b"<html>login</html>", "content_type": "text/html"}, "unsupported_media_type", "returned text/html, not an image"),
    ({"body": b"nope", "status": 404, "content_type": "text/plain"}, "media_url_unreachable", "HTTP 404"),
    ({"body": PNG * 1000}, "media_too_large", "larger than 1 MB"),
])
def test_refusals(host, served, code, words):
    url = host.serve("/x", **served)
    error = refused(fetcher(), url)
    assert error.code == code and words in error.message


def test_size_cap_without_content_length(host):
    url = host.serve("/big", PNG * 1000, stall_after=len(PNG) * 1000)  # streamed, no Content-Length
    assert refused(fetcher(), url).code == "media_too_large"


def test_unlabelled_bodies_pass_to_the_sniffer(host):
    url = host.serve("/blob", PNG, content_type="application/octet-stream")
    assert fetch(fetcher(), url).data == PNG


def test_a_stalled_server_times_out(host):
    url = host.serve("/slow.png", PNG, stall_after=100)
    error = refused(fetcher(total_timeout=0.5, read_timeout=5), url)
    assert error.code == "media_url_unreachable" and "timed out" in error.message


def test_connection_refused_is_a_clear_400():
    error = refused(fetcher(connect_timeout=1), "http://127.0.0.1:1/x.png")
    assert error.code == "media_url_unreachable" and "refused" in error.message


def test_unresolvable_host():
    def fail(host, port):
        raise OSError("Name or service not known")
    assert "could not be resolved" in refused(RemoteFetcher(resolver=fail), "http://no.such.host.invalid/x.png").message


def test_allow_private_urls_switches_the_guard_off(host):
    url = host.serve("/cat.png", PNG)
    assert refused(RemoteFetcher(), url).code == "url_not_allowed"
    assert fetch(RemoteFetcher(allow_private=True), url).data == PNG
