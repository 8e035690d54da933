"""Settings: read once from `CHAT_*` environment variables, validated before anything starts.

Each secret may instead come from a file named by `CHAT_<NAME>_FILE` (Docker and Kubernetes
secrets are mounted as files). Setting both is refused rather than silently picking one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SECRET_FIELDS = ("jwt_secret", "jwt_public_key", "redis_url", "openai_api_key")
HS_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# The signature algorithms python-jose implements. PS256/384/512 are not among them: a
# deployment that allowed them would start, then refuse every token.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
MIN_PRODUCTION_SECRET_BYTES = 32
BUDGET = re.compile(r"([1-9][0-9]{0,14})/(second|minute|hour|day)")


class ConfigError(Exception):
    """The configuration cannot work; the message names the variable and what would be right."""


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_", extra="ignore", frozen=True)

    env: Literal["development", "production"] = "development"
    host: str = "0.0.0.0"  # noqa: S104 - a container must listen beyond loopback
    port: int = Field(8000, ge=1, le=65535)
    workers: int | None = Field(None, ge=1, le=256)
    graceful_timeout: float = Field(60.0, ge=0, le=3600)

    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256"]
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = Field(10.0, ge=0, le=30)
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_scopes: str = "openid profile"
    jwt_max_bytes: int = Field(8192, ge=256, le=65536)

    cors_origins: Annotated[list[str], NoDecode] = []
    redis_url: str | None = None
    redis_ca_file: str | None = None
    rate_limit: str = "20/minute"
    ip_rate_limit: str = "60/minute"
    resume_rate_limit: str = "60/minute"
    header_timeout: float = Field(10.0, gt=0, le=300)
    body_timeout: float = Field(10.0, gt=0, le=300)
    max_connections: int = Field(4096, ge=1, le=1_000_000)
    max_connections_per_address: int = Field(256, ge=1, le=1_000_000)
    max_header_bytes: int = Field(65536, ge=8192, le=1_048_576)
    cache_scope: Literal["global", "user"] = "user"
    max_conversations_per_user: int = Field(100, ge=1, le=100_000)
    max_streams_per_user: int = Field(3, ge=1)
    stream_lease_seconds: float = Field(15.0, ge=1, le=300)
    cache_ttl: int = Field(300, ge=0)
    max_message_chars: int = Field(4000, ge=1)
    max_body_bytes: int = Field(65536, ge=64)
    history_turns: int = Field(20, ge=0)
    history_ttl: int = Field(604800, ge=1)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    resume_window: float = Field(30.0, ge=0, le=3600)
    resume_max_bytes: int = Field(1_048_576, ge=16_384, le=64 * 1_048_576)
    max_readers_per_stream: int = Field(4, ge=1, le=1000)
    token_budget: str | None = None
    max_output_tokens: int = Field(2048, ge=1, le=1_000_000)
    sse_ping_seconds: float = Field(15.0, gt=0, le=3600)
    sse_send_timeout: float = Field(30.0, gt=0, le=3600)

    backend: Literal["demo", "openai"] = "demo"
    # The models /v1 serves (CHAT_MODELS); empty: the upstream's CHAT_OPENAI_MODEL, or `demo`.
    models: Annotated[list[str], NoDecode] = []
    demo_delay_scale: float = Field(1.0, ge=0, le=100)
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_model: str | None = None
    openai_connect_timeout: float = Field(5.0, gt=0, le=120)
    openai_idle_timeout: float = Field(60.0, gt=0, le=3600)
    openai_retries: int = Field(2, ge=0, le=5)

    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    trusted_proxies: Annotated[list[str], NoDecode] = ["127.0.0.1"]

    _split = field_validator(
        "jwt_algorithms", "cors_origins", "trusted_proxies", "models", mode="before"
    )(_csv)

    @field_validator(
        "jwt_secret",
        "jwt_public_key",
        "jwt_jwks_url",
        "jwt_audience",
        "jwt_issuer",
        "oidc_issuer",
        "oidc_client_id",
        "openai_base_url",
        "openai_api_key",
        "openai_model",
        "token_budget",
        "redis_ca_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `CHAT_JWT_SECRET=` in a compose file or a Helm value left blank means "not set".
        return None if value == "" else value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_family(cls, value: list[str]) -> list[str]:
        algorithms = [a.upper() for a in value]
        unknown = set(algorithms) - HS_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown or not algorithms:
            supported = ", ".join(sorted(HS_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"unsupported algorithm(s) {sorted(unknown)}; use some of {supported}")
        if set(algorithms) & HS_ALGORITHMS and set(algorithms) - HS_ALGORITHMS:
            # An HS* secret beside RS*/ES* keys is the classic algorithm-confusion hole.
            raise ValueError("mixes HS* with RS*/ES*; allow one algorithm family per deployment")
        return algorithms

    @field_validator("rate_limit", "ip_rate_limit", "resume_rate_limit")
    @classmethod
    def _rate_syntax(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError("use the limits syntax, e.g. 20/minute or 100/hour") from None
        return value

    @field_validator("token_budget")
    @classmethod
    def _budget_syntax(cls, value: str | None) -> str | None:
        if value is not None and not BUDGET.fullmatch(value.strip()):
            raise ValueError("use tokens per window, e.g. 200000/day (second, minute, hour, day)")
        return value.strip() if value else None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value:
            from .redis.urls import parse_url

            parse_url(value)  # its ValueError says what is wrong, never the password
        return value or None

    @field_validator("redis_ca_file")
    @classmethod
    def _readable_ca(cls, value: str | None) -> str | None:
        if value and not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {value!r}; mount the CA's PEM certificate there")
        return value or None

    @field_validator("log_level", "log_format", "env", "backend", "cache_scope", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def symmetric(self) -> bool:
        return self.jwt_algorithms[0] in HS_ALGORITHMS

    @property
    def default_model(self) -> str:
        """The model a request that names none is answered by: the upstream's, or `demo`."""
        return self.openai_model if self.backend == "openai" and self.openai_model else "demo"

    @property
    def model_names(self) -> list[str]:
        """What `GET /v1/models` lists; a /v1 request naming another is a 404."""
        return self.models or [self.default_model]

    @property
    def has_key(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url or self.oidc_issuer)

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError(
                "use the provider's issuer URL, e.g. https://login.example.com/realms/x"
            )
        # Kept exactly as written: the discovery document must name this very issuer
        # (OpenID Connect Discovery §4.3), and some providers' issuers end in a slash.
        return value


def load_settings() -> Settings:
    """Read and check the settings from the environment; raise ConfigError naming what is
    wrong."""
    environ = os.environ
    overrides: dict[str, str] = {}
    for name in SECRET_FIELDS:
        variable = f"CHAT_{name.upper()}"
        path = environ.get(f"{variable}_FILE")
        if not path:
            continue
        if environ.get(variable):
            raise ConfigError(f"{variable} and {variable}_FILE are both set; set one of them")
        try:
            overrides[name] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{variable}_FILE: cannot read {path!r}: {exc.strerror}") from None
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    settings = _with_oidc(settings)
    _check_keys(settings)
    _check_budget(settings)
    if settings.env == "production":
        _check_production(settings)
    return settings


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else "settings"
        lines.append(f"CHAT_{field.upper()}: {error['msg']}")
    return "; ".join(lines)


def _check_keys(settings: Settings) -> None:
    if settings.symmetric and (
        settings.jwt_public_key or settings.jwt_jwks_url or settings.oidc_issuer
    ):
        raise ConfigError(
            "CHAT_JWT_ALGORITHMS is HS* but a public key or JWKS URL is set; "
            "use RS*/ES* algorithms with public keys, or CHAT_JWT_SECRET with HS*"
        )
    if not settings.symmetric and settings.jwt_secret:
        raise ConfigError(
            "CHAT_JWT_SECRET is set but CHAT_JWT_ALGORITHMS is RS*/ES*; "
            "set CHAT_JWT_PUBLIC_KEY or CHAT_JWT_JWKS_URL instead"
        )
    if settings.jwt_public_key and settings.jwt_jwks_url:
        raise ConfigError("set CHAT_JWT_PUBLIC_KEY or CHAT_JWT_JWKS_URL, not both")
    if not settings.symmetric and not (
        settings.jwt_public_key or settings.jwt_jwks_url or settings.oidc_issuer
    ):
        # Development mode would make an HS secret that no RS*/ES* token can match.
        raise ConfigError(
            f"CHAT_JWT_ALGORITHMS is {','.join(settings.jwt_algorithms)} but nothing can check "
            "such tokens: set CHAT_JWT_PUBLIC_KEY (or _FILE) or CHAT_JWT_JWKS_URL, "
            "or use HS256 with CHAT_JWT_SECRET"
        )
    if settings.backend == "openai" and not (settings.openai_base_url and settings.openai_model):
        raise ConfigError("CHAT_BACKEND=openai needs CHAT_OPENAI_BASE_URL and CHAT_OPENAI_MODEL")


def _with_oidc(settings: Settings) -> Settings:
    """With CHAT_OIDC_ISSUER the page signs people in with that provider, and the service
    verifies its tokens: through the keys its discovery document names, issued by it, for
    CHAT_JWT_AUDIENCE, RS256 or ES256 unless CHAT_JWT_ALGORITHMS says otherwise.

    An ID token is not an access token, but it is signed by the same keys and carries the
    client id as its audience: an API that accepted the client id as its audience would take
    any ID token the page was ever given. So production needs CHAT_JWT_AUDIENCE naming the
    API; development defaults to the client id, and `warnings` says so."""
    if settings.oidc_issuer is None:
        if settings.oidc_client_id:
            raise ConfigError("CHAT_OIDC_CLIENT_ID is set without CHAT_OIDC_ISSUER; set both")
        return settings
    if not settings.oidc_client_id:
        raise ConfigError(
            "CHAT_OIDC_ISSUER needs CHAT_OIDC_CLIENT_ID (the page's client id at the provider)"
        )
    if settings.jwt_secret or settings.jwt_public_key:
        raise ConfigError(
            "CHAT_OIDC_ISSUER verifies tokens through the provider's keys; unset "
            "CHAT_JWT_SECRET and CHAT_JWT_PUBLIC_KEY"
        )
    if settings.env == "production" and settings.jwt_audience in (None, settings.oidc_client_id):
        raise ConfigError(
            "CHAT_ENV=production with CHAT_OIDC_ISSUER needs CHAT_JWT_AUDIENCE naming this API "
            "(the audience of the access tokens your provider issues for it), not the client id "
            "CHAT_OIDC_CLIENT_ID, which every ID token carries as its audience"
        )
    updates: dict[str, object] = {
        "jwt_issuer": settings.jwt_issuer or settings.oidc_issuer,
        "jwt_audience": settings.jwt_audience or settings.oidc_client_id,
    }
    if "jwt_algorithms" not in settings.model_fields_set:
        updates["jwt_algorithms"] = ["RS256", "ES256"]
    return settings.model_copy(update=updates)


def warnings(settings: Settings) -> list[str]:
    """What start-up should warn about in a configuration that works."""
    found = []
    if settings.oidc_issuer and settings.jwt_audience == settings.oidc_client_id:
        found.append(
            "CHAT_JWT_AUDIENCE is the page's client id, which ID tokens carry as their audience "
            "too, so an ID token passes as an access token; set CHAT_JWT_AUDIENCE to the "
            "audience your provider gives access tokens for this API (required in production)"
        )
    return found


def _check_budget(settings: Settings) -> None:
    if settings.token_budget is None:
        return
    tokens = int(settings.token_budget.partition("/")[0])
    if tokens <= settings.max_output_tokens:
        # Each stream reserves its prompt and CHAT_MAX_OUTPUT_TOKENS: none would ever fit.
        raise ConfigError(
            f"CHAT_TOKEN_BUDGET is {tokens} tokens a window, which cannot hold one reply of "
            f"CHAT_MAX_OUTPUT_TOKENS={settings.max_output_tokens} and its prompt; raise the "
            "budget or lower CHAT_MAX_OUTPUT_TOKENS"
        )


def _check_production(settings: Settings) -> None:
    if not settings.has_key:
        raise ConfigError(
            "CHAT_ENV=production needs a signing key: set CHAT_JWT_SECRET (or _FILE), "
            "CHAT_JWT_PUBLIC_KEY (or _FILE) or CHAT_JWT_JWKS_URL"
        )
    secret = settings.jwt_secret
    if secret is not None and len(secret.encode()) < MIN_PRODUCTION_SECRET_BYTES:
        raise ConfigError(
            f"CHAT_JWT_SECRET is {len(secret.encode())} bytes; production needs at least "
            f"{MIN_PRODUCTION_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`)"
        )
    if (settings.jwt_public_key or settings.jwt_jwks_url) and not settings.jwt_audience:
        # A shared identity provider signs tokens for many applications with the same keys;
        # only the audience says a token was meant for this one.
        raise ConfigError(
            "CHAT_ENV=production with a public key or JWKS needs CHAT_JWT_AUDIENCE "
            "(the audience your identity provider puts in tokens for this service)"
        )
    if settings.jwt_jwks_url and not settings.jwt_issuer:
        raise ConfigError(
            "CHAT_ENV=production with CHAT_JWT_JWKS_URL needs CHAT_JWT_ISSUER "
            "(the provider's issuer URL, as in its tokens' iss claim)"
        )
    if "*" in settings.cors_origins:
        raise ConfigError(
            "CHAT_CORS_ORIGINS contains '*'; production needs exact origins "
            "such as https://chat.example.com"
        )
