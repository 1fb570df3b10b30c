"""Shopper credentials for the tests, made by libraries no one here wrote: PyJWT (with
`cryptography`) mints and publishes JWTs, Python's hmac signs `signed-header` requests.

Reads one JSON request on stdin, writes one JSON answer on stdout:
  {"op": "mint", "tokens": [{"alg", "key", "kid"?, "claims"}]}   -> ["<jwt>", ...]
      `key`: a private key in PEM (RS256, ES256, EdDSA) or the shared secret (HS256).
  {"op": "jwks", "keys": [{"key", "kid", "alg"}]}                 -> {"keys": [...]}
      `key`: a private key in PEM; its public half is published.
  {"op": "sign", "secret", "user", "timestamp"}                   -> "<hex signature>"
  {"op": "confused", "key", "kid", "claims"}                       -> "<jwt>"
      an HS256 token whose secret is a public key's PEM (the algorithm-confusion attack;
      PyJWT refuses to make one, so it is put together by hand).
"""

import base64
import hashlib
import hmac
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PUBLISHERS = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}


def mint(spec):
    headers = {"kid": spec["kid"]} if spec.get("kid") else None
    return jwt.encode(spec["claims"], spec["key"], algorithm=spec["alg"], headers=headers)


def public_jwk(spec):
    private = serialization.load_pem_private_key(spec["key"].encode(), password=None)
    jwk = json.loads(PUBLISHERS[spec["alg"]].to_jwk(private.public_key()))
    jwk.update({"kid": spec["kid"], "alg": spec["alg"], "use": "sig"})
    return jwk


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def confused(spec):
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": spec["kid"]}).encode())
    payload = b64(json.dumps(spec["claims"]).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(spec["key"].encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def main():
    request = json.load(sys.stdin)
    op = request["op"]
    if op == "mint":
        answer = [mint(spec) for spec in request["tokens"]]
    elif op == "jwks":
        answer = {"keys": [public_jwk(spec) for spec in request["keys"]]}
    elif op == "sign":
        message = f"{request['timestamp']}.{request['user']}".encode()
        answer = hmac.new(request["secret"].encode(), message, hashlib.sha256).hexdigest()
    elif op == "confused":
        answer = confused(request)
    else:
        raise SystemExit(f"unknown op {op!r}")
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
