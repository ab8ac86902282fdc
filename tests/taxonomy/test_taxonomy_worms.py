"""WoRMS client against a real HTTP server on 127.0.0.1 answering like WoRMS (recorded format),
including 204 (not found), 429, 500 and a response slower than the client's timeout."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

from planktonzilla.taxonomy import Backbone, Resolver
from planktonzilla.taxonomy.worms import WormsClient, WormsError
from test_taxonomy_fixture import write_fixture


def _record(aphia, name, rank, status="accepted", valid=None, valid_name=None):
    return {
        "AphiaID": aphia,
        "url": f"https://www.marinespecies.org/aphia.php?p=taxdetails&id={aphia}",
        "scientificname": name,
        "authority": "(Gunnerus, 1770)",
        "status": status,
        "unacceptreason": None,
        "taxonRankID": 220,
        "rank": rank,
        "valid_AphiaID": valid or aphia,
        "valid_name": valid_name or name,
        "valid_authority": "(Gunnerus, 1770)",
        "parentNameUsageID": 104464,
        "kingdom": "Animalia",
        "phylum": "Arthropoda",
        "class": "Copepoda",
        "order": "Calanoida",
        "family": "Calanidae",
        "genus": "Calanus",
        "citation": "WoRMS (2026)",
        "lsid": f"urn:lsid:marinespecies.org:taxname:{aphia}",
        "isMarine": 1,
        "isBrackish": 0,
        "isFreshwater": 0,
        "isTerrestrial": 0,
        "isExtinct": None,
        "match_type": "exact",
        "modified": "2024-02-01T10:12:43.727Z",
    }


def _tree(*levels):
    """Nested WoRMS classification from (AphiaID, rank, name) top-down."""
    node = None
    for aphia, rank, name in reversed(levels):
        node = {"AphiaID": aphia, "rank": rank, "scientificname": name, "child": node}
    return node


CALANUS = (
    (2, "Kingdom", "Animalia"),
    (1065, "Phylum", "Arthropoda"),
    (1066, "Subphylum", "Crustacea"),
    (1080, "Class", "Copepoda"),
    (1100, "Order", "Calanoida"),
    (104152, "Family", "Calanidae"),
    (104464, "Genus", "Calanus"),
    (104464001, "Species", "Calanus finmarchicus"),
)
TRIPOS = (
    (7, "Kingdom", "Chromista"),
    (368898, "Phylum", "Myzozoa"),
    (19542, "Class", "Dinophyceae"),
    (109391, "Order", "Gonyaulacales"),
    (109392, "Family", "Ceratiaceae"),
    (840626, "Genus", "Tripos"),
    (840627, "Species", "Tripos furca"),
)


class Worms(BaseHTTPRequestHandler):
    hits: Counter = Counter()
    slow = True

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _json(self, body, status=200, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _status(self, status, headers=None):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def do_GET(self):
        parts = urlsplit(self.path)
        assert parts.path.startswith("/rest/")
        endpoint, _, arg = parts.path[len("/rest/") :].partition("/")
        arg = unquote(arg)
        n = Worms.hits[(endpoint, arg)] = Worms.hits[(endpoint, arg)] + 1
        if endpoint == "AphiaRecordsByName":
            assert "like=false" in parts.query and "marine_only=false" in parts.query
            if arg == "Calanus finmarchicus":
                return self._json([_record(104464001, arg, "Species")])
            if arg == "Neoceratium furca":
                rec = _record(494049, arg, "Species", "unaccepted", 840627, "Tripos furca")
                return self._json([rec])
            if arg == "Flaky":  # fails once, then answers
                if n == 1:
                    return self._status(500)
                return self._json([_record(104464001, "Calanus finmarchicus", "Species")])
            if arg == "Busy":  # rate-limited once
                if n == 1:
                    return self._status(429, {"Retry-After": "0"})
                return self._json([_record(104464001, "Calanus finmarchicus", "Species")])
            if arg == "Down":
                return self._status(503)
            if arg == "Slow":
                if Worms.slow:
                    time.sleep(0.6)
                return self._json([_record(104464001, "Calanus finmarchicus", "Species")])
            return self._status(204)  # WoRMS: no content = no such name
        if endpoint == "AphiaClassificationByAphiaID":
            if arg == "104464001":
                return self._json(_tree(*CALANUS))
            if arg == "840627":
                return self._json(_tree(*TRIPOS))
            return self._status(204)
        return self._status(404)


@pytest.fixture()
def worms_url():
    Worms.hits = Counter()
    Worms.slow = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Worms)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/rest"
    server.shutdown()
    server.server_close()


def client(url, tmp_path, **kw):
    kw.setdefault("timeout", 0.3)
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    return WormsClient(url, cache_path=tmp_path / "worms.sqlite", **kw)


def test_lineage_by_name_and_cache_on_disk(worms_url, tmp_path):
    with client(worms_url, tmp_path) as c:
        lin = c.lineage("Calanus finmarchicus")
        assert lin.ranks() == (
            "Animalia",
            "Arthropoda",
            "Copepoda",
            "Calanoida",
            "Calanidae",
            "Calanus",
            "Calanus finmarchicus",
        )
        assert (lin.name, lin.rank, lin.aphia_id) == ("Calanus finmarchicus", "species", 104464001)
        sent = c.requests
    with client(worms_url, tmp_path) as c:  # a new client reads the same cache file
        assert c.lineage("Calanus finmarchicus").family == "Calanidae"
        assert c.requests == 0
    assert sent == 2


def test_synonym_follows_valid_aphia_id(worms_url, tmp_path):
    with client(worms_url, tmp_path) as c:
        lin = c.lineage("Neoceratium furca")
    assert (lin.name, lin.genus, lin.aphia_id) == ("Tripos furca", "Tripos", 840627)


def test_204_is_a_cached_not_found(worms_url, tmp_path):
    with client(worms_url, tmp_path) as c:
        assert c.lineage("Nonexistentia") is None
        assert c.lineage("Nonexistentia") is None
    assert Worms.hits[("AphiaRecordsByName", "Nonexistentia")] == 1


def test_retries_500_and_429(worms_url, tmp_path):
    with client(worms_url, tmp_path) as c:
        assert c.records_by_name("Flaky")[0]["AphiaID"] == 104464001
        assert c.records_by_name("Busy")[0]["AphiaID"] == 104464001
    assert Worms.hits[("AphiaRecordsByName", "Flaky")] == 2
    assert Worms.hits[("AphiaRecordsByName", "Busy")] == 2


def test_persistent_5xx_raises_and_is_not_cached(worms_url, tmp_path):
    with client(worms_url, tmp_path) as c:
        with pytest.raises(WormsError, match="503"):
            c.records_by_name("Down")
        with pytest.raises(WormsError):
            c.records_by_name("Down")
    assert Worms.hits[("AphiaRecordsByName", "Down")] == 6  # 3 attempts, twice: never cached


def test_timeout_is_retried_then_raises_never_cached_as_not_found(worms_url, tmp_path):
    with client(worms_url, tmp_path, retries=1) as c:
        t0 = time.monotonic()
        with pytest.raises(WormsError, match="Timeout"):
            c.records_by_name("Slow")
        assert time.monotonic() - t0 < 3
    Worms.slow = False  # the service recovers: the earlier failure was not remembered
    with client(worms_url, tmp_path, retries=1) as c:
        assert c.records_by_name("Slow")[0]["AphiaID"] == 104464001


def test_unreachable_server_raises(tmp_path):
    with client("http://127.0.0.1:9/rest", tmp_path, retries=1) as c, pytest.raises(WormsError):
        c.records_by_name("Calanus finmarchicus")


def test_resolver_falls_back_to_worms(worms_url, tmp_path):
    bb = Backbone.load(write_fixture(tmp_path / "bb"))
    bb_no_calanus = Backbone([t for t in bb if not t.name.startswith("Calanus")], bb.vernacular)
    with client(worms_url, tmp_path) as c:
        res = Resolver(bb_no_calanus, c).resolve("Calanus_finmarchicus", "user")
        assert res.provenance == "worms" and res.lineage.species == "Calanus finmarchicus"
        curated_only = Resolver(bb_no_calanus, index=None).resolve("Calanus_finmarchicus", "user")
        assert curated_only.lineage.name != "Calanus finmarchicus"
        # offline, the broad name index finds it, below the curated confidence
        offline = Resolver(bb_no_calanus).resolve("Calanus_finmarchicus", "user")
        assert (offline.provenance, offline.lineage.species) == ("index", "Calanus finmarchicus")
        assert offline.confidence < 0.95
