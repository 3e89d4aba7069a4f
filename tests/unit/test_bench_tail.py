"""bench/tail.py's reading of TorchServe's metrics log (metrics_mode=log), on lines in the
form TorchServe 0.12 writes them (copied from a run, the request IDs shortened): a request's
latency and queue wait are paired only from adjacent lines, and a batch's size and time only
under the same request IDs; and the shipped log4j2.xml's metric loggers are turned on."""

from __future__ import annotations

from bench.tail import METRICS_FILE, band, metrics_logging_config, parse_metrics

HOST = "|#hostname:vm,timestamp:1796679309"
MODEL = "|#model_name:sentiment,model_version:default" + HOST


def request(latency_us: float, queue_us: float) -> list[str]:
    return [
        f"ts_inference_latency_microseconds.Microseconds:{latency_us}{MODEL}",
        f"ts_queue_latency_microseconds.Microseconds:{queue_us}{MODEL}",
        f"QueueTime.Milliseconds:{int(queue_us // 1000)}.0|#Level:Host{HOST}",
    ]


def batch(ids: str, size: int, ms: float) -> list[str]:
    tail = f"|#ModelName:sentiment,Level:Model|#hostname:vm,requestID:{ids},timestamp:1796679309"
    return [
        f"SentimentBatchSize.Requests:{size}.0{tail}",
        f"SentimentInferenceSeconds.Seconds:{ms / 1000 - 0.001}{tail}",
        f"PredictionTime.ms:{ms}{tail}",
    ]


def test_requests_pair_adjacent_lines_and_batches_pair_by_their_ids():
    lines = [
        f"Requests2XX.Count:1.0|#Level:Host{HOST}",
        *request(21694.155, 99.538),
        *batch("4c1d41b4-c4f9,6fc84961-a60a", 2, 18.45),
        # another thread's line between a latency and its queue wait: that pair is left out
        f"ts_inference_latency_microseconds.Microseconds:127607.328{MODEL}",
        f"Requests2XX.Count:1.0|#Level:Host{HOST}",
        f"ts_queue_latency_microseconds.Microseconds:20507.063{MODEL}",
        *request(128332.058, 20425.308),
        # a batch's lines interleaved with another's: paired by their request IDs
        *[
            a
            for pair in zip(batch("e113f0dc", 1, 9.5), batch("03a606ec,70459564,d61065ad", 3, 30.0), strict=True)
            for a in pair
        ],
        "a line that is no metric",
    ]
    requests, batches = parse_metrics("\n".join(lines))
    assert [(round(a, 6), round(b, 6)) for a, b in requests] == [(21.694155, 0.099538), (128.332058, 20.425308)]
    assert sorted(batches) == [(1.0, 9.5), (2.0, 18.45), (3.0, 30.0)]


def test_the_slowest_band_and_the_middle():
    requests = [(float(ms), 1.0) for ms in range(1, 201)]  # latencies 1..200 ms, 1 ms queued each
    slowest = band(requests, 0.99, 1.0)
    assert slowest == {"requests": 2, "latency_ms": 199.5, "queue_wait_ms": 1.0, "service_ms": 198.5}
    assert band(requests, 0.45, 0.55)["requests"] == 20


def test_the_logging_config_turns_both_metric_loggers_on(tmp_path):
    text = metrics_logging_config(tmp_path).read_text()
    for name in ("MODEL_METRICS", "TS_METRICS"):
        assert f'<Logger name="{name}" level="info" additivity="false"><AppenderRef ref="metrics_file"/>' in text
    assert f'fileName="${{dir}}/{METRICS_FILE}"' in text
