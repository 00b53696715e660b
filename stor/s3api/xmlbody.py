"""S3's XML documents: the answers written as text (small, fixed shapes), the two requests parsed with limits."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape

from stor.s3api.errors import S3Error

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_TYPE = "application/xml"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
OWNER_ID = "stor"  # the one owner of the one bucket
# The largest request document read: a CompleteMultipartUpload of 10,000 parts is ~1 MB.
MAX_REQUEST_XML = 2 << 20


def iso_time(seconds: float) -> str:
    """S3's time format: ISO 8601 in UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def element(name: str, value: str | int | bool | None) -> str:
    """<name>value</name>, escaped; nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{escape(str(value))}</{name}>"


def document(root: str, *parts: str) -> bytes:
    return f'{HEAD}<{root} xmlns="{NAMESPACE}">{"".join(parts)}</{root}>'.encode()


def error_document(error: S3Error, resource: str, request_id: str) -> bytes:
    extra = "".join(element(k, v) for k, v in error.extra.items())
    return (
        f"{HEAD}<Error>{element('Code', error.code)}{element('Message', error.message)}{extra}"
        f"{element('Resource', resource)}{element('RequestId', request_id)}</Error>"
    ).encode()


def owner() -> str:
    return f"<Owner>{element('ID', OWNER_ID)}{element('DisplayName', OWNER_ID)}</Owner>"


def encoded(value: str | None, url: bool) -> str | None:
    """A key or prefix as a listing with encoding-type=url gives it."""
    if value is None or not url:
        return value
    return quote(value, safe="/")


def list_buckets(bucket: str, created: float) -> bytes:
    return document(
        "ListAllMyBucketsResult", owner(),
        f"<Buckets><Bucket>{element('Name', bucket)}{element('CreationDate', iso_time(created))}</Bucket></Buckets>",
    )


def location(region: str) -> bytes:
    # us-east-1 is spoken of as no constraint at all.
    return document("LocationConstraint", escape(region) if region != "us-east-1" else "")


def access_control_policy(public_read: bool) -> bytes:
    grants = [
        f'<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">'
        f"{element('ID', OWNER_ID)}{element('DisplayName', OWNER_ID)}</Grantee>"
        f"{element('Permission', 'FULL_CONTROL')}</Grant>"
    ]
    if public_read:
        grants.append(
            '<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group">'
            "<URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee>"
            f"{element('Permission', 'READ')}</Grant>"
        )
    return document("AccessControlPolicy", owner(), f"<AccessControlList>{''.join(grants)}</AccessControlList>")


def cors_configuration(origins: Iterable[str], methods: Iterable[str], headers: Iterable[str],
                       expose: Iterable[str], max_age: int) -> bytes:
    rule = (
        "".join(element("AllowedOrigin", o) for o in origins)
        + "".join(element("AllowedMethod", m) for m in methods)
        + "".join(element("AllowedHeader", h) for h in headers)
        + "".join(element("ExposeHeader", h) for h in expose)
        + element("MaxAgeSeconds", max_age)
    )
    return document("CORSConfiguration", f"<CORSRule>{rule}</CORSRule>")


def contents(key: str, modified: float, etag: str, size: int, with_owner: bool, url: bool) -> str:
    return (
        f"<Contents>{element('Key', encoded(key, url))}{element('LastModified', iso_time(modified))}"
        f"{element('ETag', etag)}{element('Size', size)}{owner() if with_owner else ''}"
        f"{element('StorageClass', 'STANDARD')}</Contents>"
    )


def common_prefixes(prefixes: Iterable[str], url: bool) -> str:
    return "".join(f"<CommonPrefixes>{element('Prefix', encoded(p, url))}</CommonPrefixes>" for p in prefixes)


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    return document(
        "InitiateMultipartUploadResult", element("Bucket", bucket), element("Key", key), element("UploadId", upload_id)
    )


def complete_multipart(location_url: str, bucket: str, key: str, etag: str) -> bytes:
    return document(
        "CompleteMultipartUploadResult", element("Location", location_url), element("Bucket", bucket),
        element("Key", key), element("ETag", etag),
    )


def parse(body: bytes, root: str) -> ElementTree.Element:
    """A request's XML document whose root element is `root`, namespaces dropped; MalformedXML otherwise.

    No DTD is accepted (no entity can be declared, so none can expand).
    """
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML", "The XML you provided may not declare a DTD or entities")
    try:
        tree = ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise S3Error(
            "MalformedXML", f"The XML you provided was not well-formed or did not validate against our schema: {e}"
        ) from None
    for node in tree.iter():
        node.tag = node.tag.rpartition("}")[2]
    if tree.tag != root:
        raise S3Error("MalformedXML", f"The XML you provided has <{tree.tag}> where <{root}> was expected")
    return tree


def parse_complete_multipart(body: bytes) -> list[tuple[int, str]]:
    """The (part number, ETag) pairs of a CompleteMultipartUpload request, as listed."""
    parts = []
    for part in parse(body, "CompleteMultipartUpload").findall("Part"):
        number, etag = part.findtext("PartNumber"), part.findtext("ETag")
        if number is None or not number.strip().isdigit() or etag is None:
            raise S3Error("MalformedXML", "Each <Part> needs a <PartNumber> and an <ETag>")
        parts.append((int(number.strip()), etag.strip()))
    if not parts:
        raise S3Error("MalformedXML", "A CompleteMultipartUpload lists at least one <Part>")
    return parts


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """The keys of a DeleteObjects request, and whether it asked to be quiet."""
    tree = parse(body, "Delete")
    keys = [key for key in (o.findtext("Key") for o in tree.findall("Object")) if key is not None]
    if not keys or len(keys) > 1000:
        raise S3Error("MalformedXML", "A Delete request lists 1 to 1000 <Object> keys")
    return keys, (tree.findtext("Quiet") or "").strip().lower() == "true"
