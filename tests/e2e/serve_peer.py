"""Clients of `burn-diffusers serve` for `cargo xtask e2e` (loopback only, bounded waits).

    serve_peer.py openai BASE KEY OUT.png      the official OpenAI client generates an image
    serve_peer.py load BASE KEY PID N           N concurrent requests; counts answers, peak RSS
    serve_peer.py browser BASE OUT.png KEY      headless Chromium drives the web page

Each prints one JSON object on stdout.
"""
import base64
import json
import sys
import threading
import time
import urllib.error
import urllib.request

PROMPT = "a photo of an astronaut riding a horse on mars"


def openai_generate(base, key, out):
    from openai import OpenAI

    client = OpenAI(base_url=base + "/v1", api_key=key, timeout=120, max_retries=0)
    models = client.models.list()
    model = models.data[0].id
    result = client.images.generate(
        model=model,
        prompt=PROMPT,
        n=1,
        size="32x32",
        response_format="b64_json",
        extra_body={"steps": 4, "seed": 0, "guidance": 7.5, "scheduler": "DDIMScheduler"},
    )
    png = base64.b64decode(result.data[0].b64_json)
    with open(out, "wb") as f:
        f.write(png)
    return {"model": model, "bytes": len(png), "images": len(result.data)}


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def load(base, key, pid, n):
    body = json.dumps({"prompt": PROMPT, "size": "32x32", "steps": 6, "seed": 3}).encode()
    statuses = [None] * n
    errors = []

    def one(i):
        req = urllib.request.Request(
            base + "/v1/images/generations",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + key},
        )
        try:
            with urllib.request.urlopen(req, timeout=180) as r:
                answer = json.loads(r.read())
                png = base64.b64decode(answer["data"][0]["b64_json"])
                statuses[i] = 200 if png.startswith(b"\x89PNG") else "bad-image"
        except urllib.error.HTTPError as e:
            payload = json.loads(e.read() or b"{}")
            statuses[i] = e.code if "error" in payload else f"{e.code}-no-json"
        except Exception as e:  # noqa: BLE001 - every failure is reported
            errors.append(repr(e))
            statuses[i] = "error"

    started = time.time()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    hung = sum(t.is_alive() for t in threads)
    counts = {}
    for s in statuses:
        counts[str(s)] = counts.get(str(s), 0) + 1
    return {
        "counts": counts,
        "hung": hung,
        "errors": errors[:5],
        "seconds": round(time.time() - started, 2),
        "peak_rss_kib": peak_rss_kib(pid),
    }


def browser(base, out, key):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=900,640"]:
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(base + "/")
        WebDriverWait(driver, 30).until(
            lambda d: "tiny-sd" in d.find_element(By.ID, "model").text)
        for field, value in [("prompt", "a red circle on a blue square"), ("width", "32"),
                             ("height", "32"), ("steps", "4"), ("seed", "")]:
            el = driver.find_element(By.ID, field)
            el.clear()
            if value:
                el.send_keys(value)
        if key:
            driver.find_element(By.ID, "apikey").send_keys(key)
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.ID, "status").text in ("done", "interrupted")
            or d.find_element(By.ID, "status").text.startswith(("error", "failed")))
        status = driver.find_element(By.ID, "status").text
        src = driver.find_element(By.ID, "image").get_attribute("src")
        seed = driver.find_element(By.ID, "shown-seed").text
        decoded = driver.execute_script(
            "const i = document.getElementById('image');"
            "return [i.complete, i.naturalWidth, i.naturalHeight];")
        history = len(driver.find_elements(By.CSS_SELECTOR, "#history img"))
        driver.save_screenshot(out)
        png = base64.b64decode(src.split(",", 1)[1]) if src and "," in src else b""
        return {"status": status, "seed": seed, "decoded": decoded, "history": history,
                "b64": base64.b64encode(png).decode()}
    finally:
        driver.quit()


def main():
    cmd = sys.argv[1]
    if cmd == "openai":
        print(json.dumps(openai_generate(sys.argv[2], sys.argv[3], sys.argv[4])))
    elif cmd == "load":
        print(json.dumps(load(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
    elif cmd == "browser":
        print(json.dumps(browser(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
