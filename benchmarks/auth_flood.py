"""Valid keys under a flood of made-up ones: requests/s that POST /v1/feedback holds for a valid app key
while ``wrk`` sends random well-formed keys at the same route, against the same load without the flood.

One real API process (one uvicorn worker, the embedded Kafka-protocol broker, Redis, SQLite or the database
given), ``api.trusted_proxy`` on so the flood can claim many addresses. Three measurements per round:
- alone: 16 connections with the valid key;
- flood from one address: the same, plus 16 connections of random keys from one client address (its
  failure budget is spent at once: 429 without a lookup);
- flood from many addresses: random keys each from a random X-Forwarded-For address, so every made-up
  key is a cache miss that costs one SQL lookup (the per-address budget cannot help; only the format check,
  the LRU of valid keys and the negative cache do).
SQL lookups are read from ``rlhf_api_key_lookups_total``. Rounds interleave the three; each reports its best.

    python -m benchmarks.auth_flood [--quick] [--seconds 6] [--rounds 2] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from benchmarks.ingest import LUA
from benchmarks.report import emit
from rlhf_loop.bus.broker import EmbeddedBroker
from tests.support.api import start_api

FLOOD_LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local spread = {spread}
math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16))
request = function()
  local t = {{}}
  for i = 1, 43 do local n = math.random(1, 64); t[i] = chars:sub(n, n) end
  local h = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer rlk_" .. table.concat(t)}}
  if spread then
    h["X-Forwarded-For"] = "10." .. math.random(0, 255) .. "." .. math.random(0, 255) .. "." .. math.random(1, 254)
  end
  return wrk.format(nil, nil, h, wrk.body)
end
"""


def flood(url: str, body: str, spread: bool, seconds: float, workdir: Path) -> subprocess.Popen:
    script = workdir / f"flood-{spread}.lua"
    script.write_text(FLOOD_LUA.format(body=body, spread="true" if spread else "false"))
    return subprocess.Popen(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script), url], stdout=subprocess.PIPE, text=True
    )


def lookups(api_url: str) -> float:
    text = httpx.get(f"{api_url}/metrics").text
    return sum(float(v) for v in re.findall(r'^rlhf_api_key_lookups_total\{result="\w+"\} (\S+)$', text, re.M))


def valid_wrk(url: str, key: str, body: str, seconds: float, workdir: Path) -> dict[str, float]:
    """requests/s and p99 of the valid key's load (16 connections); any refused request is a failure."""
    script = workdir / "valid.lua"
    script.write_text(LUA.format(key=key, body=body))
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if refused:
        raise RuntimeError(f"the valid key was refused {refused.group(1)} times\n{out}")
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p99_ms": float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--seconds", type=float, default=None, help="per measurement and round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args(argv)
    seconds = int(args.seconds or (5 if args.quick else 8))
    rounds = args.rounds or (1 if args.quick else 2)
    if shutil.which("wrk") is None:
        sys.exit("benchmarks.auth_flood needs wrk: apt-get install wrk")

    from rlhf_loop.models.loading import resolve_base_model
    from rlhf_loop.settings import ApiSettings, ModelSettings

    demo = Path(resolve_base_model(ModelSettings()))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        db_url = args.database_url or f"sqlite:///{work / 'db.sqlite3'}"
        api = start_api(
            work, db_url, broker.bootstrap_servers, demo, "redis://127.0.0.1:6379/13",
            api__rate_limit="1000000000", api__trusted_proxy="true", api__key_user_quota="1000000",
            api__auth_failure_limit=str(ApiSettings().auth_failure_limit),  # the default (the test helper raises it)
        )  # fmt: skip
        try:
            token = httpx.post(
                f"{api.url}/v1/generate", headers=api.headers, json={"prompt": "Where is order #4821?", "user_ref": "b"}
            ).json()["feedback_token"]
            body = json.dumps({"feedback_token": token, "rating": "up"})
            url = f"{api.url}/v1/feedback"
            runs: dict[str, list[dict[str, float]]] = {"alone": [], "one": [], "many": []}
            for _ in range(rounds):
                runs["alone"].append(valid_wrk(url, api.app_key, body, seconds, work))
                for mode, spread in (("one", False), ("many", True)):
                    before = lookups(api.url)
                    attacker = flood(url, body, spread, seconds, work)
                    result = valid_wrk(url, api.app_key, body, seconds, work)
                    out = attacker.communicate()[0]
                    result["flood_rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                    result["lookups_per_bogus"] = (lookups(api.url) - before) / max(1.0, result["flood_rps"] * seconds)
                    runs[mode].append(result)
        finally:
            api.process.stop()
    alone, one, many = (max(runs[k], key=lambda r: r["rps"]) for k in ("alone", "one", "many"))
    rows = [["valid key alone", alone["rps"], "-", "-", alone["p99_ms"]]] + [
        [f"valid key + flood from {label}", r["rps"], r["flood_rps"], r["lookups_per_bogus"], r["p99_ms"]]
        for label, r in (("one address", one), ("many addresses", many))
    ]
    emit(
        f"POST /v1/feedback with a valid key (16 connections) during a made-up-key flood (16), best of {rounds}",
        ["load", "valid req/s", "flood req/s", "SQL lookups per bogus key", "valid p99 ms"],
        rows,
        {
            "benchmark": "auth_flood",
            "valid_under_flood_one_address_vs_alone": round(one["rps"] / alone["rps"], 3),
            "valid_under_flood_many_addresses_vs_alone": round(many["rps"] / alone["rps"], 3),
            "valid_alone_rps": round(alone["rps"]),
            "flood_one_address_rps": round(one["flood_rps"]),
            "flood_many_addresses_rps": round(many["flood_rps"]),
            "lookups_per_bogus_key_one_address": round(one["lookups_per_bogus"], 4),
            "lookups_per_bogus_key_many_addresses": round(many["lookups_per_bogus"], 4),
            "seconds_each": seconds,
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
