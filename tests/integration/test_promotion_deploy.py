"""Approval and deployment across two real API processes (uvicorn, PostgreSQL, Redis, the Kafka-protocol
broker): only approver keys act, illegal transitions are refused, two different approvers are needed,
and after the second approval both replicas serve the new adapter within 2 s while a continuous
/generate load sees no failed request; a rollback from the CLI takes both back the same way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.simulator import Simulator
from schemas.tables import PromotionAudit
from tests.conftest import REDIS_URL
from tests.support.adapters import register, taught_adapter
from tests.support.api import Api, cli, start_api
from workers.training.model.synthetic import distinct_prompts

pytestmark = pytest.mark.integration
SWAP_DEADLINE_S = 2.0
PROMPT = "My parcel #4821 never arrived, can you help?"


@dataclass
class Cluster:
    apis: list[Api]
    lead_key: str
    """A second approver's key."""
    sessions: sessionmaker
    adapter_dir: Path


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str, broker: EmbeddedBroker, demo_model_dir: Path
) -> Iterator[Cluster]:
    """Two API replicas on one database; pointer polling slowed to 60 s, so only the Redis notice can
    make a replica switch within the deadline. One torch thread each: two replicas with a thread per core
    each oversubscribe a 2-core machine, and requests then took ~10x longer (80 instead of 800 in the
    test), which delayed the swaps past 2 s."""
    settings = {
        "promotion__canary_share": "0",
        "promotion__required_approvals": "2",
        "promotion__poll_interval_s": "60",
        "api__rate_limit": "100000",
        "runtime__torch_threads": "1",
    }
    apis = [
        start_api(
            tmp_path_factory.mktemp(f"api{i}"),
            module_pg_url,
            broker.bootstrap_servers,
            demo_model_dir,
            REDIS_URL,
            **settings,
        )
        for i in range(2)
    ]
    lead_key = cli(apis[0].env, "keys", "create", "ml-lead", "--role", "approver", "--owner", "ml-lead")
    adapter_dir = taught_adapter(
        demo_model_dir,
        tmp_path_factory.mktemp("adapters") / "polite",
        "Thanks for reaching out, I am happy to help. Have a nice day!",
        distinct_prompts(Simulator(7), 32, seed=1),
    )
    engine = create_engine(module_pg_url)
    yield Cluster(apis, lead_key, sessionmaker(engine), adapter_dir)
    engine.dispose()
    for api in apis:
        api.process.stop()


def _post(api: Api, path: str, key: str, reason: str = "reviewed the gate and samples") -> httpx.Response:
    return httpx.post(
        f"{api.url}{path}", json={"reason": reason}, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_only_approvers_act_and_illegal_transitions_are_refused(cluster: Cluster) -> None:
    api = cluster.apis[0]
    with cluster.sessions.begin() as session:
        register(session, "ad-fresh", cluster.adapter_dir, state="candidate")
    app_key_approval = _post(api, "/v1/promotions/ad-fresh/approve", api.app_key)
    assert app_key_approval.status_code == 403 and app_key_approval.json()["code"] == "forbidden"
    assert httpx.post(f"{api.url}/v1/promotions/ad-fresh/approve", json={"reason": "x"}).status_code == 401
    assert httpx.get(f"{api.url}/v1/adapters", headers=api.headers).status_code == 403

    skipped_gate = _post(api, "/v1/promotions/ad-fresh/approve", api.approver_key)
    assert skipped_gate.status_code == 409
    assert "candidate cannot become approved" in skipped_gate.json()["message"]
    assert _post(api, "/v1/promotions/ad-nope/approve", api.approver_key).status_code == 404
    no_reason = httpx.post(
        f"{api.url}/v1/promotions/ad-fresh/reject",
        json={"reason": ""},
        headers={"Authorization": f"Bearer {api.approver_key}"},
    )
    assert no_reason.status_code == 422
    assert _post(api, "/v1/promotions/rollback", api.approver_key).status_code == 409  # nothing deployed yet


class Load:
    """Clients calling /generate on every replica in a loop, recording (started, replica, status, adapter);
    ``started`` is wall-clock time, comparable with the database's timestamps."""

    def __init__(self, apis: list[Api], clients_per_api: int = 3) -> None:
        self.apis, self.stop = apis, threading.Event()
        self.records: list[tuple[float, int, int, str]] = []
        self.threads = [
            threading.Thread(target=self._loop, args=(i, c), daemon=True)
            for i in range(len(apis))
            for c in range(clients_per_api)
        ]

    def _loop(self, replica: int, client: int) -> None:
        api = self.apis[replica]
        with httpx.Client(base_url=api.url, headers=api.headers, timeout=30) as http:
            n = 0
            while not self.stop.is_set():
                started = time.time()
                body = {
                    "prompt": PROMPT,
                    "user_ref": f"load-{replica}-{client}-{n % 50}",
                    "sampling": {"max_new_tokens": 8, "temperature": 0},
                }
                try:
                    r = http.post("/v1/generate", json=body)
                    self.records.append((started, replica, r.status_code, r.json().get("adapter_id", "")))
                except httpx.HTTPError as e:
                    self.records.append((started, replica, 0, type(e).__name__))
                n += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def switched_after(self, t0: float, adapter_id: str) -> list[float]:
        """Per replica: seconds from ``t0`` to the start of the first request after which every response
        carries ``adapter_id`` (inf if it never settled)."""
        out = []
        for replica in range(len(self.apis)):
            rows = sorted(r for r in self.records if r[1] == replica and r[0] >= t0)
            stale = [r[0] for r in rows if r[3] != adapter_id]
            settled = [r[0] for r in rows if r[3] == adapter_id and (not stale or r[0] > max(stale))]
            out.append(min(settled) - t0 if settled else float("inf"))
        return out


def _rolled_back_at(cluster: Cluster, adapter_id: str) -> float:
    """When the rollback of ``adapter_id`` was decided: its audit row's time (the start of the transaction
    that wrote it), as a Unix timestamp."""
    with cluster.sessions() as session:
        at = session.scalar(
            select(PromotionAudit.at).where(
                PromotionAudit.adapter_id == adapter_id, PromotionAudit.to_state == "rolled_back"
            )
        )
    assert at is not None, f"no rollback of {adapter_id} in the audit"
    return at.timestamp()


def test_both_replicas_serve_the_approved_adapter_within_2_s_without_a_failed_request(cluster: Cluster) -> None:
    api, other = cluster.apis
    with cluster.sessions.begin() as session:
        register(session, "ad-polite", cluster.adapter_dir, state="awaiting_approval")
    with Load(cluster.apis) as load:
        time.sleep(1.0)
        first = _post(api, "/v1/promotions/ad-polite/approve", api.approver_key)
        assert first.status_code == 200 and first.json()["state"] == "awaiting_approval", first.text
        again = _post(other, "/v1/promotions/ad-polite/approve", other.approver_key)  # another key of ml-team
        assert again.status_code == 409 and "must come from someone else" in again.json()["message"]
        t0 = time.time()
        second = _post(other, "/v1/promotions/ad-polite/approve", cluster.lead_key)
        assert second.status_code == 200, second.text
        assert second.json()["state"] == "active" and second.json()["deployment"]["active"] == "ad-polite"
        time.sleep(SWAP_DEADLINE_S + 1.5)
        switch = load.switched_after(t0, "ad-polite")

        out = cli(
            api.env, "adapters", "rollback", "--reason", "drill: roll back", "--key", cluster.lead_key, "--api", api.url
        )
        assert "rolled back ad-polite (active)" in out and "serving base model" in out
        t1 = _rolled_back_at(cluster, "ad-polite")  # not the CLI's start: its own start-up is no part of the swap
        time.sleep(SWAP_DEADLINE_S + 1.5)
        back = load.switched_after(t1, "base")

    print(f"replicas switched {switch} s after the approval, {back} s after the rollback; {len(load.records)} requests")
    failed = [r for r in load.records if r[2] != 200]
    assert not failed, failed[:5]
    assert len(load.records) > 50
    assert max(switch) <= SWAP_DEADLINE_S, switch
    assert max(back) <= SWAP_DEADLINE_S, back

    detail = httpx.get(f"{api.url}/v1/adapters/ad-polite", headers={"Authorization": f"Bearer {api.approver_key}"})
    audit = [(a["from_state"], a["to_state"], a["actor"]) for a in detail.json()["audit"]]
    assert audit[1:] == [
        ("awaiting_approval", "awaiting_approval", "ml-team"),
        ("awaiting_approval", "approved", "ml-lead"),
        ("approved", "active", "ml-lead"),
        ("active", "rolled_back", "ml-lead"),
    ]
    assert detail.json()["audit"][-1]["reason"] == "drill: roll back"


@pytest.fixture
def browser() -> Iterator:
    """Debian's headless Chromium through its chromedriver (the CI installs both; missing is a failure)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), f"{binary} is missing: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
GATE = {
    "passed": True,
    "samples": [{"prompt": PROMPT, "candidate": "Thanks, happy to help.", "active": "Ugh."}],
    "checks": [
        {"name": "reward_win_rate", "value": 0.81, "threshold": 0.5, "op": ">=", "passed": True, "detail": "vs base"}
    ],
    "golden_failures": [],
}


def _click(driver, element_id: str) -> None:  # noqa: ANN001 - a selenium WebDriver
    """Click a submit button and wait until the page it leads to has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 30).until(_replaced(page))


def _replaced(page):  # noqa: ANN001, ANN202 - selenium types
    """staleness_of, also for Chrome's "does not belong to the document" answer about a replaced page."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support import expected_conditions

    def check(driver) -> bool:  # noqa: ANN001
        try:
            return expected_conditions.staleness_of(page)(driver)
        except WebDriverException as e:
            return "does not belong to the document" in str(e)

    return check


def _sign_in(driver, url: str, key: str) -> None:  # noqa: ANN001 - a selenium WebDriver
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/ui/adapters")
    assert driver.current_url.endswith("/ui/login")  # not signed in: sent to the sign-in form
    driver.find_element(By.ID, "key").send_keys(key)
    _click(driver, "sign-in")


def test_the_approval_page_approves_a_candidate_end_to_end(cluster: Cluster, browser) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api = cluster.apis[0]
    with cluster.sessions.begin() as session:
        adapter = register(session, "ad-page", cluster.adapter_dir, state="awaiting_approval")
        adapter.metrics = {"gate": GATE, "evaluation": {"mean_reward": 0.42, "kl_vs_base": 2.5}}

    _sign_in(browser, api.url, api.app_key)
    assert "not an approver key" in browser.find_element(By.CLASS_NAME, "error").text

    _sign_in(browser, api.url, api.approver_key)
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.LINK_TEXT, "ad-page").click()
    WebDriverWait(browser, 30).until(_replaced(page))
    assert browser.find_element(By.ID, "state").text == "awaiting_approval"
    assert "reward_win_rate" in browser.find_element(By.ID, "gate").text
    samples = browser.find_element(By.ID, "samples").text
    assert "Thanks, happy to help." in samples and "Ugh." in samples
    assert "0.420" in browser.page_source  # candidate metrics next to the active's

    browser.find_element(By.ID, "reason").send_keys("gate passed, samples read well")
    _click(browser, "approve")
    assert "approved by ml-team: now awaiting_approval" in browser.find_element(By.ID, "done").text
    browser.find_element(By.ID, "reason").send_keys("agree")
    _click(browser, "approve")
    assert "must come from someone else" in browser.find_element(By.ID, "error").text  # same approver again

    browser.delete_all_cookies()
    _sign_in(browser, api.url, cluster.lead_key)
    browser.get(f"{api.url}/ui/adapters/ad-page")
    browser.find_element(By.ID, "reason").send_keys("second approval")
    _click(browser, "approve")
    assert browser.find_element(By.ID, "state").text == "active"
    audit = browser.find_element(By.ID, "audit").text
    assert "ml-lead" in audit and "second approval" in audit and "gate passed, samples read well" in audit
    deployed = httpx.get(f"{api.url}/v1/deployment", headers={"Authorization": f"Bearer {cluster.lead_key}"}).json()
    assert deployed["active"] == "ad-page"
