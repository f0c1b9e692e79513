"""A corpus for the secret detectors: real-shaped FAKE keys (none of them is or was a real
credential; several are the vendors' own documentation examples) and ordinary technical
prose with look-alikes. Keys are assembled at run time so that no source line holds one
(the repository's hook refuses a literal ``sk-`` followed by 32 letters and digits).

README's Secrets section shows the counts; tests/test_detectors.py checks both."""

from __future__ import annotations

import random

_B64 = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7FAKEfakeFAKEfake0123456789"


def _pem(label: str, lines: int = 3) -> str:
    body = "\n".join(_B64[:64] for _ in range(lines))
    return f"-----BEGIN {label}-----\n{body}\nAB==\n-----END {label}-----"


# (kind, the text, the secret the detector must report: no more, no less)
FAKES: list[tuple[str, str, str]] = []


def _fake(kind: str, secret: str, before: str = "use ", after: str = " today") -> None:
    FAKES.append((kind, f"{before}{secret}{after}", secret))


_fake("openai_key", "sk-" + "proj-" + "FaKe0" * 8 + "T3BlbkFJ" + "x1Y2" * 5)
_fake("openai_key", "sk-" + "FaKe" + "0123456789" + "T3BlbkFJ" + "AbCdEf012345" * 2)
_fake("openai_key", "sk-" + "svcacct-" + "Fake_Key-" + "0Ab1Cd2Ef3" * 4, "key=", "")
_fake("openai_key", "sk-" + "admin-" + "FAKEfake" + "9Zy8Xw7V" * 4, '"', '"')
_fake("anthropic_key", "sk-" + "ant-api03-" + "FaKe" + "aB3-" * 20 + "AA")
_fake("anthropic_key", "sk-" + "ant-admin01-" + "Fake1Key2" * 6, "ANTHROPIC_API_KEY=", "\n")
_fake("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE")
_fake("aws_access_key_id", "ASIA" + "FAKE2EXAMPLE3456", "id: ", ",")
_fake(
    "aws_secret_access_key",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "[default]\naws_secret_access_key = ",
    "\nregion = eu-west-1",
)
_fake("aws_secret_access_key", "FAKE" + "a1B2c3D4e5" * 3 + "/+zzzz", "AWS_SECRET_ACCESS_KEY=", "")
_fake(
    "aws_secret_access_key", "FAKEfake0123456789+/abcdefghijABCDEFGHIJ", '"secretAccessKey": "', '"'
)
_fake("github_token", "ghp_" + "FaKe" + "0aB1" * 8)
_fake("github_token", "github_pat_" + "11FAKE0" + "aB_" * 10 + "x9Z8", "token: ", "")
_fake("github_token", "gho_" + "Fake9" * 8, "", "")
_fake("gitlab_token", "glpat-" + "FaKe" + "x1Y2z3W4q5R6" + "abcd")
_fake("google_api_key", "AIza" + "SyFAKE0aB1cD2eF3gH4iJ5kL6mN7oP8qR9s")
_fake("google_api_key", "AIza" + "SyD-fake_Key0123456789abcdefghijklm", "?key=", "&q=x")
_fake("stripe_key", "sk_" + "live_" + "51FAKE" + "aB1cD2eF3gH4iJ5kL6mN7")
_fake("stripe_key", "rk_" + "live_" + "FAKE0" * 5)
_fake("stripe_key", "sk_" + "test_" + "FAKE4eC39HqLyjWDarjtT1zdp7dc", "stripe.api_key = '", "'")
_fake("huggingface_token", "hf_" + "FAKEaBcDeFgHiJkLmNoPqRsTuVwXyZaBcD")
_fake("huggingface_token", "hf_" + "fakeTokenOnlyLettersMixedCaseHere", "HF_TOKEN=", "")
_fake("slack_token", "xoxb-" + "123456789012-1234567890123-" + "FAKEaBcDeFgHiJkLmNoPqRsT")
_fake("slack_token", "xoxp-" + "1234-5678-9012-" + "fakefake", "", ".")
_fake("private_key", _pem("RSA PRIVATE KEY"), "here:\n", "\nthanks")
_fake("private_key", _pem("OPENSSH PRIVATE KEY", 1), "", "")
_fake("private_key", _pem("PRIVATE KEY").replace("\n", " "), "one line: ", " done")
_fake("private_key", "-----BEGIN EC PRIVATE KEY-----", "", " Now, unrelated: what is 2+2?")
_fake("bearer_token", "FAKEtok3n.abc123_def456-ghi789", "Authorization: Bearer ", "")
_fake("bearer_token", "ya29" + ".FakeAccessToken0123456789", "-H 'Authorization: Bearer ", "'")
_fake(
    "jwt",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiw"
    "iaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "Decode this token: ",
    "",
)

# Look-alikes from real documentation and code: none of them is a secret.
LOOK_ALIKES: list[str] = [
    "We use Bearer token-based-authentication for the internal API.",
    "The model is sk-learn-compatible, so it drops into any pipeline.",
    "Wrap it as an sk-learn-compatible-estimator and call fit().",
    "Paste your bot token (xoxb-your-token-here) into the settings page.",
    "Set OPENAI_API_KEY=sk-... in your shell before running the script.",
    "Replace sk-your-key-goes-here with the key from the dashboard.",
    "export AWS_SECRET_ACCESS_KEY=YOUR_SECRET_ACCESS_KEY_GOES_HERE",
    "aws_secret_access_key = <your-secret-access-key>",
    "Google keys look like AIzaSyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX in the docs.",
    "Stripe test keys look like sk_test_xxxxxxxxxxxxxxxxxxxxxxxx.",
    "A GitLab token glpat-xxxxxxxxxxxxxxxxxxxx goes in the CI variables.",
    "Log in with huggingface-cli login and paste hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.",
    "The GitHub token ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx must not be committed.",
    "AWS access key ids start with AKIAXXXXXXXXXXXXXXXX or ASIA for temporary ones.",
    "The header reads Authorization: Bearer <token>, nothing else.",
    "A desk-lamp, an ask-me-anything thread and a risk-free trial.",
    "Use the Bearer scheme with a short-lived access token from the login endpoint.",
    "The file starts with -----BEGIN CERTIFICATE----- and is public.",
    "Use sk-proj- keys for projects and sk-svcacct- keys for service accounts.",
    "eyJ is what base64 of an opening brace and quote looks like.",
    "Our skill tree has sk-1, sk-2 and sk-3 nodes.",
]

_SUBJECTS = [
    "The scheduler",
    "Our API gateway",
    "The retry middleware",
    "A background worker",
    "The tokenizer",
    "The cache layer",
    "Each replica",
    "The load balancer",
    "The CI pipeline",
    "The ingestion job",
    "The embedding service",
    "The auth proxy",
    "This Kubernetes operator",
    "The Postgres connection pool",
    "The rate limiter",
]
_VERBS = [
    "batches requests every 50 ms",
    "retries idempotent calls with exponential backoff",
    "rotates credentials through the secret manager",
    "writes structured JSON logs to stdout",
    "streams server-sent events to the browser",
    "validates the bearer token before forwarding",
    "caches responses keyed by a SHA-256 of the body",
    "signs each webhook payload with HMAC-SHA256",
    "exports Prometheus metrics on port 9090",
    "uses sk-learn-compatible estimators for scoring",
    "refreshes OAuth2 access tokens five minutes early",
    "reads AWS credentials from the instance profile",
    "keeps at most 1,000 entries in its LRU map",
    "decodes base64url segments of the JWT header",
    "shards keys across a six-node Redis Cluster",
]
_ENDS = [
    "so that a slow client never blocks the event loop.",
    "which keeps p99 latency under 200 ms.",
    "as described in RFC 9111, section 5.2.",
    "and the README explains how to turn it off.",
    "unless the --dry-run flag is set.",
    "because the upstream rejects more than 3,500 requests per minute.",
    "while the dashboard shows hit ratio and drift events.",
    "after reading token-based-authentication.md in the docs folder.",
    "with the api_key taken from an environment variable, never from the config file.",
    "so the xoxb-style bot token stays in the vault.",
]


def prose(count: int = 300, seed: int = 0) -> list[str]:
    """``count`` sentences of ordinary technical prose (seeded: the same every run)."""
    rng = random.Random(seed)
    return LOOK_ALIKES + [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)}, {rng.choice(_ENDS)}"
        for _ in range(count - len(LOOK_ALIKES))
    ]
