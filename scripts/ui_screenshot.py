"""Screenshots of the MLflow UI and the report for the README (for maintainers; not a CI dependency).

Starts `mlflow ui` on a store, drives Debian's Chromium with Playwright and saves:
  docs/mlflow-views.png    the runs page's Views menu holding the experiment's saved ranking view
  docs/mlflow-runs.png     the runs table through that view (parents ranked, the deciding columns)
  docs/mlflow-parent.png   the best parent run's page (its description: the fold table and the aggregates)
  docs/mlflow-chart.png    the chart view with cv/test/acc_mean per configuration
  docs/report-comparison.png and docs/report-activation-maps.png from `leukexp-report`'s output folder

    pip install playwright && apt-get install chromium
    leukexp-train -m experiment=ui_tour
    python scripts/ui_screenshot.py --store mlruns/mlflow.db --experiment ui_tour --report reports/ui_tour
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from leukexp.tracking.views import RANKING_VIEW_ID, view_url
from leukexp.vocabulary import TEST_ACC, cv_metric


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(store: Path, port: int) -> subprocess.Popen:
    """`mlflow ui` on the store, answering /health."""
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}",
                           "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return ui
        except OSError:
            time.sleep(0.5)
    ui.kill()
    raise SystemExit("mlflow ui did not start")


def settle(page: object, wait_ms: int = 5000) -> None:
    """Wait for the page to draw, then close the assistant side panel if it is open."""
    page.wait_for_timeout(wait_ms)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)


def main() -> int:
    """Take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("mlruns/mlflow.db"))
    parser.add_argument("--experiment", default="ui_tour")
    parser.add_argument("--report", type=Path, default=None, help="a leukexp-report output folder")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    store = args.store.resolve()
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"{args.experiment}: not in {store}")
    parents = client.search_runs([experiment.experiment_id], "tags.`leukexp.kind` = 'cv'",
                                 order_by=[f"metrics.`{cv_metric(TEST_ACC, 'mean')}` DESC"])
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ui = start_ui(store, port)
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1800, "height": 900})
            parents_only = "searchFilter=tags.%60leukexp.kind%60%20%3D%20%27cv%27"
            page.goto(f"{base}/runs?workflowType=machine_learning")  # as a user arrives: then the Views menu
            settle(page)
            menu = page.get_by_test_id("saved-views-trigger")
            with contextlib.suppress(Exception):  # the menu appears once the experiment's tags have loaded
                menu.first.wait_for(timeout=20000)
            page.wait_for_timeout(3000)  # and the first runs have loaded (a view opened earlier races that fetch)
            if menu.count():
                menu.first.click()
                page.wait_for_timeout(1000)
                page.screenshot(path=str(args.out / "mlflow-views.png"))
                entry = page.get_by_text("leukexp ranking", exact=False)
                if entry.count():
                    entry.first.click()
                else:
                    page.goto(view_url(f"http://127.0.0.1:{port}", experiment.experiment_id, RANKING_VIEW_ID))
            else:
                page.goto(view_url(f"http://127.0.0.1:{port}", experiment.experiment_id, RANKING_VIEW_ID))
            settle(page, 12000)  # the view's filter and sort apply on a second fetch of the runs
            page.screenshot(path=str(args.out / "mlflow-runs.png"))
            if parents:
                page.goto(f"{base}/runs/{parents[0].info.run_id}?workflowType=machine_learning")
                settle(page)
                description = page.get_by_text("Description", exact=True)
                more = page.get_by_text("Show more", exact=True)
                if more.count():
                    more.first.click()
                    page.wait_for_timeout(800)
                if description.count():
                    description.first.scroll_into_view_if_needed()
                    page.wait_for_timeout(500)
                page.screenshot(path=str(args.out / "mlflow-parent.png"))
            page.goto(f"{base}/runs?workflowType=machine_learning&{parents_only}&compareRunsMode=CHART")
            settle(page)
            search = page.get_by_placeholder("Search metric charts")
            if search.count():
                search.first.fill(cv_metric(TEST_ACC, "mean"))
                page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "mlflow-chart.png"))
            browser.close()
    finally:
        ui.kill()
    if args.report:
        for name, target in (("comparison.png", "report-comparison.png"),
                             ("best_activation_maps.png", "report-activation-maps.png")):
            if (args.report / name).is_file():
                shutil.copy(args.report / name, args.out / target)
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
