"""The dashboard in a real browser (headless Chromium, Debian's, installed by .ci/run): every view loads
with no console error, shows the numbers the queries computed, draws its charts, and its filter form
narrows the view through the query string."""

from __future__ import annotations

import pytest
from services import chromium
from test_dashboard import NOW, ORCHS, dataset  # noqa: F401 - the same known dataset
from test_dashboard import results as results  # noqa: F401 - the module fixture, reused
from test_demand import SPEC
from test_qualified import MODEL
from test_qualified import stored as stored  # noqa: F401 - the capacity series' dataset, reused

from fleet.dashboard import queries as q
from fleet.dashboard.engine import DuckDBEngine
from fleet.dashboard.demand import demand_gaps
from fleet.dashboard.graduation import board
from fleet.dashboard.qualified import qualified_series
from fleet.dashboard.server import DashboardServer
from fleet.graduation import GraduationRules

pytestmark = pytest.mark.slow
VIEWS = ("/", "/?by=gpu", "/workflows", "/capacity", "/campaigns")


@pytest.fixture(scope="module")
def site(results):  # noqa: F811 - pytest's fixture by name
    d, _ = results
    srv = DashboardServer(DuckDBEngine(d), d, port=0, quiet=True).start()
    with chromium() as driver:
        yield srv, driver, d
    srv.close()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def cells(driver, table: int = 0) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    t = driver.find_elements(By.TAG_NAME, "table")[table]
    return [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in t.find_elements(By.TAG_NAME, "tr")][1:]


def navigated(driver, part: str, deadline_s: float = 15.0) -> str:
    """A click on a link or a submit button returns before the browser has loaded the next page: wait,
    with a deadline, for the address to hold `part`."""
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, deadline_s).until(ec.url_contains(part))
    WebDriverWait(driver, deadline_s).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return driver.current_url


def test_every_view_loads_without_console_errors_and_shows_the_leaderboard_numbers(site):
    from selenium.webdriver.common.by import By

    srv, driver, d = site
    for view in VIEWS:
        driver.get(srv.url + view)
        assert driver.find_element(By.TAG_NAME, "h1").text, view
        errors = console_errors(driver)
        assert not errors, (view, errors)
    driver.get(srv.url + "/?window=all")
    rows = cells(driver)
    board, _ = q.leaderboard(DuckDBEngine(d), q.Filters(window="all"))
    assert [r[1] for r in rows] == [b["orchestrator"] for b in board]
    assert [float(r[2]) for r in rows] == pytest.approx([b["score"] for b in board], abs=0.01)
    assert [int(r[15]) for r in rows] == [b["counted"] for b in board]  # the "sessions" column
    assert [int(r[16]) for r in rows] == [b["skipped"] for b in board]


def test_an_orchestrator_view_draws_its_charts_and_links_to_reports(site):
    from selenium.webdriver.common.by import By

    srv, driver, _ = site
    driver.get(srv.url + "/?window=all")
    driver.find_element(By.LINK_TEXT, "https://flaky.test:8935").click()
    url = navigated(driver, "/orchestrator?")
    assert "id=https" in url and "window=all" in url
    charts = driver.find_elements(By.CSS_SELECTOR, "svg")
    assert len(charts) == 2 and all(c.size["width"] > 200 and c.size["height"] > 100 for c in charts)
    assert all(c.find_elements(By.CSS_SELECTOR, "path") for c in charts)  # lines and bands were drawn
    failures = cells(driver, 1)
    assert failures and failures[0][:2] == ["pipeline", "gateway_error"]
    assert not console_errors(driver)


def test_the_filter_form_narrows_the_view_through_the_query_string(site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    srv, driver, d = site
    driver.get(srv.url + "/workflows?window=all")
    Select(driver.find_element(By.NAME, "model")).select_by_visible_text("comfyui")
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    assert "window=all" in navigated(driver, "model=comfyui")
    per_model = cells(driver, 0)
    assert [r[0] for r in per_model] == ["comfyui"]
    want = {r["grp"]: r["rows_"] for r in q.groups(DuckDBEngine(d), q.Filters(window="all", model="comfyui"), "model")}
    assert int(per_model[0][1]) == want["comfyui"]
    driver.get(srv.url + "/?window=1y")
    assert "bad request" in driver.find_element(By.TAG_NAME, "body").text


RULES = GraduationRules.model_validate({"rules": [{"model": "*", "graduate": {"days": 2, "min_sessions": 3,
                                                                             "min_score": 50}}]})


@pytest.fixture(scope="module")
def planning(stored, site):  # noqa: F811 - pytest's fixtures by name
    """The planning views over the capacity series' dataset, in the same browser."""
    d, _ = stored
    _, driver, _ = site
    driver.get_log("browser")   # what earlier tests left (a 400 they asked for)
    srv = DashboardServer(DuckDBEngine(d), d, port=0, quiet=True, rules=RULES,
                          demand=SPEC.model_copy(update={"naap": None}), clock=lambda: NOW).start()
    yield srv, driver, d
    srv.close()


def test_the_planning_views_load_draw_and_show_the_queries_numbers(planning):
    from selenium.webdriver.common.by import By

    srv, driver, d = planning
    engine = DuckDBEngine(d)
    driver.get(srv.url + f"/capacity?model={MODEL}&window=30d")
    assert not console_errors(driver)
    driver.find_element(By.LINK_TEXT, "Over time →").click()
    assert f"model={MODEL}" in navigated(driver, "/capacity/series?") and not console_errors(driver)
    charts = driver.find_elements(By.CSS_SELECTOR, "svg")
    assert len(charts) == 1 and charts[0].size["width"] > 200 and charts[0].find_elements(By.CSS_SELECTOR, "path")
    series = qualified_series(engine, q.Filters(window="30d", model=MODEL, now=NOW))
    over_time = cells(driver)
    assert len(over_time) == len(series["buckets"]) > 1
    assert [int(r[1]) for r in over_time] == [b["totals"]["qualified_slots"] for b in series["buckets"]]

    driver.get(srv.url + f"/graduation?model={MODEL}")
    assert not console_errors(driver)
    want = board(engine, RULES, MODEL, 30, NOW)
    rows = cells(driver)
    assert [(r[0], r[1], r[2]) for r in rows] == [(w["orchestrator"], w["gpu"], w["state"]) for w in want]
    driver.get(srv.url + f"/demand?model={MODEL}")
    assert not console_errors(driver)
    gaps = demand_gaps(engine, q.Filters(window="7d", model=MODEL, now=NOW), SPEC)
    assert [(r[0], float(r[7])) for r in cells(driver)] == [(g["region"], g["gap"]) for g in gaps["regions"]]


def test_a_count_links_to_exactly_the_sessions_it_counted(planning):
    from selenium.webdriver.common.by import By

    srv, driver, _ = planning
    driver.get(srv.url + "/?window=7d")
    first = cells(driver)[0]
    counted_n = int(first[15])
    driver.find_element(By.LINK_TEXT, first[15]).click()
    url = navigated(driver, "/sessions?")
    assert "counted=yes" in url and "orchestrator=" in url
    assert len(cells(driver)) == counted_n and not console_errors(driver)
    assert {r[3] for r in cells(driver)} == {first[1]}   # the orchestrator column
