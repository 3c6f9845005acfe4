"""The few protobuf messages of proto/edge.proto that tests send to cairnd's edge API, encoded by
hand (proto3 wire format: varints, length-delimited fields, packed floats), so that the tests
need no protobuf package. Field numbers follow proto/edge.proto."""
import math
import random
import struct

from harness import http


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, wire, payload):
    return _varint(num << 3 | wire) + payload


def _bytes(num, b):
    return _field(num, 2, _varint(len(b)) + b)


def _uint(num, n):
    return _field(num, 0, _varint(n))


def _floats(num, values):
    return _bytes(num, struct.pack(f"<{len(values)}f", *values))


def register_request(token, device_name, model_name="edge"):
    return (_bytes(1, token.encode()) + _bytes(2, device_name.encode()) +
            _bytes(3, model_name.encode()))


def decode_strings(buf):
    """Fields of a message holding only strings, as {field number: str}."""
    out, i = {}, 0
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        n, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out[key >> 3] = buf[i:i + n].decode()
        i += n
    return out


def sample_batch(device_id, n, seq=1, side=28, classes=10, seed=0, model_name="edge"):
    """n noisy grey images with the device's (made-up, confident) predictions."""
    rng = random.Random(seed)
    pixels = bytes(rng.randrange(256) for _ in range(n * side * side))
    probs, ents = [], []
    for _ in range(n):
        top = rng.randrange(classes)
        p = [0.5 if c == top else 0.5 / (classes - 1) for c in range(classes)]
        probs += p
        ents.append(-sum(x * math.log(x) for x in p))
    return (_bytes(1, device_id.encode()) + _bytes(2, model_name.encode()) + _uint(3, 0) +
            _uint(4, seq) + _uint(5, n) + _uint(6, 1) + _uint(7, side) + _uint(8, side) +
            _uint(9, classes) + _bytes(10, pixels) + _floats(12, probs) + _floats(13, ents))


PB = {"Content-Type": "application/x-protobuf"}


def enroll(url, token, name):
    """(device id, device key) of a new device."""
    status, _, body = http("POST", url + "/v1/edge/devices", register_request(token, name),
                           headers=PB)
    assert status == 200, (status, body)
    f = decode_strings(body)
    return f[1], f[2]


def upload(url, device_id, key, n, seq=1, seed=0):
    headers = dict(PB, Authorization=f"Bearer {key}")
    status, _, body = http("POST", url + "/v1/edge/samples",
                           sample_batch(device_id, n, seq=seq, seed=seed), headers=headers)
    assert status == 200, (status, body)
    return body
