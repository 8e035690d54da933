"""The Helm chart, rendered by the real helm and checked against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail) and against what the contract asks:
a hardened pod, probes, a grace period longer than the drain, /metrics never public."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.service import running_service

from .tools import (
    CHART,
    GUNICORN_KILL_MARGIN,
    KUBERNETES_VERSION,
    VALUE_SETS,
    app_container,
    app_deployment,
    env_of,
    free_port,
    helm,
    only,
    render,
    rendered,
)

# Custom resources: no schema in kubernetes-validate, so each gets its own structural
# checks below instead.
CUSTOM_KINDS = {"HTTPRoute", "ServiceMonitor"}
INGRESS_NGINX = "nginx.ingress.kubernetes.io/"


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values", ["default", "production"])
def test_helm_lint_strict_is_clean(values: str) -> None:
    result = helm("lint", "--strict", str(CHART), *VALUE_SETS[values])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_rendered_manifests_validate_against_kubernetes_schemas(values: str) -> None:
    docs = rendered(values)
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            validate(doc)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}"
            )


def test_schema_validation_is_live() -> None:
    """A Deployment with a misspelt field fails, so the passes above are real verdicts."""
    doc = yaml.safe_load(yaml.safe_dump(app_deployment(rendered("default"))))
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(doc)


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_app_pod_is_hardened(values: str) -> None:
    docs = rendered(values)
    pod = app_deployment(docs)["spec"]["template"]["spec"]
    container = app_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    # The only writable place is an emptyDir on /tmp.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_app_probes_ports_and_metrics_port(values: str) -> None:
    docs = rendered(values)
    container = app_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9090 and ports["http"] != ports["metrics"]
    env = env_of(container)
    assert env["CHAT_PORT"] == str(ports["http"])
    assert env["CHAT_METRICS_PORT"] == str(ports["metrics"])
    assert container["command"] + container["args"] == ["chat-service", "serve"]
    # On the metrics port, which client connections to the HTTP port never crowd out.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["port"] == "metrics"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_each_redis_mode_reaches_the_app_as_a_url_file_and_a_ca_file() -> None:
    for values in ("sentinel", "cluster", "tls"):
        docs = rendered(values)
        env = env_of(app_container(docs))
        assert env["CHAT_REDIS_URL_FILE"].endswith("/redis-url")
        assert "CHAT_REDIS_URL" not in env  # the password stays in the Secret's file
        [secret] = [d for d in docs if d["kind"] == "Secret"]
        url = base64.b64decode(secret["data"]["redis-url"]).decode()
        assert url.startswith(
            {"sentinel": "redis+sentinel://", "cluster": "redis+cluster://"}.get(
                values, "rediss://"
            )
        )
        if values == "tls":
            assert env["CHAT_REDIS_CA_FILE"].endswith("/redis-ca.crt")
            ca = base64.b64decode(secret["data"]["redis-ca.crt"]).decode()
            assert ca.startswith("-----BEGIN CERTIFICATE-----")
        else:
            assert "CHAT_REDIS_CA_FILE" not in env and "redis-ca.crt" not in secret["data"]
        assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]


def test_sign_in_with_an_openid_provider_reaches_the_app() -> None:
    env = env_of(app_container(rendered("oidc")))
    assert env["CHAT_OIDC_ISSUER"] == "https://login.example.com/realms/staff"
    assert env["CHAT_OIDC_CLIENT_ID"] == "chat-page"
    assert env["CHAT_OIDC_SCOPES"] == "openid profile"
    # The provider's keys verify: no secret, key or algorithm list of the chart's own.
    assert not {"CHAT_JWT_SECRET_FILE", "CHAT_JWT_ALGORITHMS", "CHAT_JWT_JWKS_URL"} & set(env)


def test_a_token_budget_reaches_the_app_only_when_set() -> None:
    default = env_of(app_container(rendered("default")))
    assert "CHAT_TOKEN_BUDGET" not in default
    assert default["CHAT_MAX_OUTPUT_TOKENS"] == "2048"
    alternatives = env_of(app_container(rendered("alternatives")))
    assert alternatives["CHAT_TOKEN_BUDGET"] == "200000/day"
    assert alternatives["CHAT_MAX_OUTPUT_TOKENS"] == "1024"


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_secrets_reach_the_app_as_files_only(values: str) -> None:
    env = env_of(app_container(rendered(values)))
    for name in ("CHAT_JWT_SECRET", "CHAT_JWT_PUBLIC_KEY", "CHAT_OPENAI_API_KEY"):
        assert name not in env, f"{name} must come from a file (CHAT_..._FILE)"
    if "CHAT_REDIS_URL" in env:  # only the in-chart Redis, which has no password
        assert re.fullmatch(r"redis://[a-z0-9-]+-redis:6379/0", env["CHAT_REDIS_URL"])
    assert env["CHAT_ENV"] == "production"


def grace_and_drain(docs: Sequence[dict[str, Any]]) -> tuple[int, int, int]:
    pod = app_deployment(docs)["spec"]["template"]["spec"]
    container = app_container(docs)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return (
        pod["terminationGracePeriodSeconds"],
        int(command[1]),
        int(env_of(container)["CHAT_GRACEFUL_TIMEOUT"]),
    )


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_grace_period_outlasts_prestop_and_drain(values: str) -> None:
    grace, pre_stop, drain = grace_and_drain(rendered(values))
    assert pre_stop > 0
    assert grace > pre_stop + drain + GUNICORN_KILL_MARGIN


def test_grace_period_follows_the_graceful_timeout() -> None:
    """Raising the drain raises the grace period with it; it is computed, not a constant."""
    grace, pre_stop, drain = grace_and_drain(render("--set", "config.gracefulTimeout=900"))
    assert drain == 900
    assert grace > pre_stop + drain + GUNICORN_KILL_MARGIN


@pytest.mark.parametrize("values", ["production", "everything"])
def test_ingress_streams_unbuffered_and_routes_only_http(values: str) -> None:
    ingress = only(rendered(values), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations[INGRESS_NGINX + "proxy-buffering"] == "off"
    assert annotations[INGRESS_NGINX + "proxy-request-buffering"] == "off"
    assert int(annotations[INGRESS_NGINX + "proxy-read-timeout"]) >= 3600
    assert int(annotations[INGRESS_NGINX + "proxy-send-timeout"]) >= 3600
    backends = [
        path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends
    for backend in backends:
        assert backend["port"] == {"name": "http"}
    assert "metrics" not in yaml.safe_dump(ingress["spec"])


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_service_names_http_and_metrics_ports(values: str) -> None:
    service = only(rendered(values), "Service", **{"app.kubernetes.io/component": "server"})
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "http"
    assert ports["metrics"]["targetPort"] == "metrics"


def test_httproute_routes_only_the_http_port() -> None:
    """No published schema here, so its structure is checked directly."""
    docs = rendered("everything")
    route = only(docs, "HTTPRoute")
    service = only(docs, "Service", **{"app.kubernetes.io/component": "server"})
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] and all("name" in p for p in route["spec"]["parentRefs"])
    for rule in route["spec"]["rules"]:
        assert rule["timeouts"]["request"] == "3600s"
        for ref in rule["backendRefs"]:
            assert ref["name"] == service["metadata"]["name"]
            assert ref["port"] == ports["http"] != ports["metrics"]


@pytest.mark.parametrize("values", ["production", "everything"])
def test_servicemonitor_scrapes_the_metrics_port(values: str) -> None:
    docs = rendered(values)
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service", **{"app.kubernetes.io/component": "server"})
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_network_policy_admits_ingress_to_http_and_prometheus_to_metrics() -> None:
    policy = only(rendered("default"), "NetworkPolicy", **{"app.kubernetes.io/component": "server"})
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"http", "metrics"}
    assert any("namespaceSelector" in peer for peer in rules["http"])
    assert any("namespaceSelector" in peer for peer in rules["metrics"])


def test_production_values_use_an_existing_secret_and_external_redis() -> None:
    docs = rendered("production")
    kinds = [doc["kind"] for doc in docs]
    assert "Secret" not in kinds, "production keys come from secrets.existingSecret"
    assert kinds.count("Deployment") == 1, "no in-chart Redis in production"
    env = env_of(app_container(docs))
    assert env["CHAT_REDIS_URL_FILE"].startswith("/etc/chat-service/secrets/")
    assert env["CHAT_JWT_SECRET_FILE"].startswith("/etc/chat-service/secrets/")
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= set(kinds)


def test_helm_test_pod_streams_with_the_apps_own_environment() -> None:
    docs = rendered("default")
    pod = only(docs, "Pod", **{"app.kubernetes.io/component": "test"})
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    test_env = env_of(pod["spec"]["containers"][0])
    app_env = env_of(app_container(docs))
    assert {k: v for k, v in test_env.items() if not k.startswith("TEST_")} == app_env
    script = "\n".join(pod["spec"]["containers"][0]["args"])
    assert "chat-service" in script and "token" in script
    assert "/chat/hello" in script and "event: done" in script
    assert test_env["TEST_BASE_URL"].endswith(":80")
    # The test pod gets through the NetworkPolicy by the client label.
    labels = pod["metadata"]["labels"]
    assert labels.get("chat-chat-service-client") == "true"


BAD_VALUES = [
    (("--set", "replicaCount=-1"), "/replicaCount"),
    (("--set", "config.workers=two"), "/config/workers"),
    (("--set", "replicaCuont=3"), "replicaCuont"),
    (("--set", "secrets.jwtSecret=too-short"), "/secrets/jwtSecret"),
    (("--set", "auth.mode=none"), "/auth/mode"),
    (("--set", "config.corsOrigins[0]=chat.example.com"), "/config/corsOrigins/0"),
    (("--set", "ingress.hosts[0].host=x,ingress.hosts[0].paths[0].pathType=Any"), "pathType"),
    (("--set", "ports.metrics=8000"), "ports.http and ports.metrics must differ"),
    (("--set", "redis.internal.enabled=false"), "secrets.redisUrl"),
    (("--set", "config.env=production,config.corsOrigins[0]=*"), "'*'"),
    (("--set", "config.tokenBudget=lots"), "/config/tokenBudget"),
    (("--set", "redis.external.mode=replicated"), "/redis/external/mode"),
    (("--set", "auth.mode=oidc"), "auth.mode oidc needs auth.oidc.issuer and auth.oidc.clientId"),
    (("--set", "auth.oidc.issuer=login.example.com"), "/auth/oidc/issuer"),
    (
        (
            "--set",
            "auth.mode=oidc,auth.oidc.issuer=https://login.example.com,auth.oidc.clientId=page",
        ),
        "auth.mode oidc in production needs auth.audience",
    ),
    (
        (
            "--set",
            "auth.mode=oidc,auth.oidc.issuer=https://login.example.com,auth.oidc.clientId=page,"
            "auth.audience=page",
        ),
        "auth.mode oidc in production needs auth.audience",
    ),
    (("--set", "secrets.redisUrl=memcached://x:1"), "/secrets/redisUrl"),
    (
        (
            "--set",
            "redis.internal.enabled=false,redis.external.mode=sentinel,"
            "secrets.redisUrl=redis://redis.example:6379",
        ),
        "must start with redis+sentinel:// for redis.external.mode sentinel",
    ),
    (
        ("--set", "redis.internal.enabled=false,redis.external.tls.privateCa=true"),
        "set secrets.redisUrl",
    ),
    (
        (
            "--set",
            "redis.internal.enabled=false,redis.external.tls.privateCa=true,"
            "secrets.redisUrl=rediss://redis.example:6380",
        ),
        "redis.external.tls.privateCa needs secrets.redisCa",
    ),
    (("--set", "config.maxOutputTokens=0"), "/config/maxOutputTokens"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_refused_with_a_pointer_to_the_value(
    args: tuple[str, ...], message: str
) -> None:
    result = helm("template", "chat", str(CHART), *args)
    assert result.returncode != 0, f"helm accepted {args}"
    assert message in result.stderr, result.stderr


def _documented_keys(lines: list[str]) -> list[str]:
    """Keys of values.yaml that neither carry a `# --` comment nor sit under a key that
    does, and that are leaves (a section is fine if everything in it is documented)."""
    entries: list[tuple[int, str, bool, bool]] = []  # indent, key, documented, has_value
    comment_block: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment_block.append(stripped)
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(.*)$", line)
        if match and not stripped.startswith("-"):
            documented = any(c.startswith("# --") for c in comment_block)
            entries.append((len(match[1]), match[2], documented, bool(match[3].strip())))
        comment_block = []
    undocumented = []
    stack: list[tuple[int, str, bool]] = []
    for position, (indent, key, documented, has_value) in enumerate(entries):
        while stack and stack[-1][0] >= indent:
            stack.pop()
        covered = documented or any(d for _, _, d in stack)
        next_indent = entries[position + 1][0] if position + 1 < len(entries) else -1
        is_section = not has_value and next_indent > indent
        if not covered and not is_section:
            undocumented.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent, key, documented))
    return undocumented


def test_every_value_is_documented() -> None:
    for name in ("values.yaml",):
        missing = _documented_keys((CHART / name).read_text().splitlines())
        assert not missing, f"{name}: no `# --` description for {missing}"


def test_app_version_is_the_service_version() -> None:
    """The default image tag is the chart's appVersion, so it must name this release."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(
        r'^__version__ = "([^"]+)"',
        (CHART.parents[1] / "service" / "__init__.py").read_text(),
        re.M,
    )
    assert version, "service/__init__.py sets __version__"
    assert chart["appVersion"] == version[1]


def test_helm_test_script_passes_against_the_real_service() -> None:
    """The `helm test` pod's own script, run here against the real service (metrics on
    their own port, as in the chart), with the pod's TEST_* settings pointed at it."""
    pod = only(rendered("default"), "Pod", **{"app.kubernetes.io/component": "test"})
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-c"]
    metrics_port = free_port()
    with running_service({"CHAT_METRICS_PORT": str(metrics_port)}) as service:
        env = {
            **service.env,
            # `chat-service token` must be found as in the image.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "TEST_BASE_URL": service.url,
            "TEST_METRICS_URL": f"http://127.0.0.1:{metrics_port}",
            "TEST_AUTH_MODE": "secret",
        }
        result = subprocess.run(
            [sys.executable, "-c", container["args"][0]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   the stream ends with event: done" in result.stdout
