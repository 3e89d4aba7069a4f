"""A private Prometheus (Debian's binary) scraping given targets with the repo's scrape
config and, optionally, the recording and alerting rules of monitoring/prometheusrule.yaml.
For the tests and the local stack; stopped by its process group's id."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.net import free_port, http, wait_for_port
from common.paths import ROOT

SCRAPE_CONFIG = ROOT / "monitoring" / "prometheus.yml"
PROMETHEUS_RULE = ROOT / "monitoring" / "prometheusrule.yaml"


def rule_groups() -> dict:
    """The rule groups of the PrometheusRule, as a plain Prometheus rule file."""
    return {"groups": yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]}


@dataclass
class LocalPrometheus:
    workdir: Path
    targets: dict[str, int]  # pod label -> metrics port on 127.0.0.1
    # pod label -> a gateway's metrics listener (GET /metrics/gateway, job sentiment-gateway)
    gateway_targets: dict[str, int] = field(default_factory=dict)
    scrape_interval: str = "1s"
    with_rules: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> LocalPrometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("the prometheus binary is missing: apt-get install prometheus (make test does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load(SCRAPE_CONFIG.read_text())
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = self.scrape_interval
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        for name, targets in (("sentiment", self.targets), ("sentiment-gateway", self.gateway_targets)):
            jobs[name]["static_configs"] = [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": "local", "pod": pod}}
                for pod, port in targets.items()
            ]
        config["scrape_configs"] = [job for job in config["scrape_configs"] if job["static_configs"]]
        if self.with_rules:
            (self.workdir / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
            config["rule_files"] = [str(self.workdir / "rules.yaml")]
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with open(self.workdir / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def alive() -> None:
            if self.proc.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + (self.workdir / "prometheus.log").read_text()[-2000:])

        try:
            wait_for_port("127.0.0.1", self.port, timeout, alive)
            deadline = time.monotonic() + timeout
            while http(self.url + "/-/ready", timeout=2)[0] != 200:
                alive()
                if time.monotonic() > deadline:
                    raise TimeoutError("prometheus not ready")
                time.sleep(0.3)
        except BaseException:
            self.stop()
            raise
        return self

    def query(self, expr: str) -> list[dict]:
        status, body = http(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=10)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise ValueError(f"query {expr!r} failed: {answer.get('error', body[:300])}")
        return answer["data"]["result"]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        self.proc = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
