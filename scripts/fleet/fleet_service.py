"""Fleet operations with Microsoft's SDKs, unmodified, against the hub example: azure-iot-hub's
IoTHubJobManager and IoTHubConfigurationManager as the back end (the service REST API over
HTTPS), azure-iot-device's IoTHubDeviceClient as the devices (MQTT/TLS on localhost:8883).

Environment: IOT_SERVICE_CS (iothubowner, HostName=localhost:PORT), REQUESTS_CA_BUNDLE (the
hub's CA certificate file, for the service SDK) and IOT_CA_PEM (the same file, for the devices).

  fleet_service.py run               the steps below (prints "run ID" first)
  fleet_service.py after-restart ID  after a restart of the hub: the jobs and configurations of
                                     run ID are still there, appliedCount still 3

Steps (one line each on stdout, "ok" at the end; exits non-zero with the reason otherwise):
  devices        four devices created, tagged building 43 (three) or 44 (one); three connect
  configuration  create_configuration: its desired properties reach the connected devices'
                 twins (the devices see the patch) and appliedCount/targetedCount are right;
                 a lower-priority one applies nowhere; update, list, delete
  method-job     create_scheduled_job (device method) over tags.building = '43': the connected
                 devices answer, the offline one fails; per-device outcomes read back with
                 SELECT * FROM devices.jobs
  twin-job       create_scheduled_job (twin update) over deviceId IN [...]: tags and desired
                 properties written, the device sees the patch
  scheduled      a job starting in an hour is scheduled, then cancelled; query_scheduled_jobs
"""

import datetime
import json
import os
import sys
import threading
import time
import uuid

from azure.iot.device import IoTHubDeviceClient, MethodResponse
from azure.iot.hub import IoTHubConfigurationManager, IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import (
    CloudToDeviceMethod,
    Configuration,
    ConfigurationContent,
    ConfigurationMetrics,
    JobRequest,
    QuerySpecification,
    Twin,
    TwinProperties,
)

PATIENCE = 30.0
RUN = uuid.uuid4().hex[:8]


def say(*parts):
    print(*parts, flush=True)


def check(condition, what):
    if not condition:
        raise SystemExit("fleet_service: " + what)


def wait_for(what, probe, timeout=PATIENCE):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit("fleet_service: timed out waiting for " + what)
        time.sleep(0.1)


class Device:
    """An azure-iot-device client that answers every method and records desired patches."""

    def __init__(self, device_id, connection_string, ca_pem):
        self.id = device_id
        self.methods = []
        self.patches = []
        self.lock = threading.Lock()
        self.client = IoTHubDeviceClient.create_from_connection_string(
            connection_string, server_verification_cert=ca_pem
        )
        self.client.on_method_request_received = self.on_method
        self.client.on_twin_desired_properties_patch_received = self.on_patch
        self.client.connect()

    def on_method(self, request):
        with self.lock:
            self.methods.append((request.name, request.payload))
        response = MethodResponse.create_from_method_request(
            request, 200, {"device": self.id, "method": request.name, "payload": request.payload}
        )
        self.client.send_method_response(response)

    def on_patch(self, patch):
        with self.lock:
            self.patches.append(patch)
        # Report what was applied, so a configuration's custom metric can count it.
        interval = (patch.get("telemetry") or {}).get("interval")
        if interval is not None:
            self.client.patch_twin_reported_properties({"interval": interval})

    def saw(self, predicate):
        with self.lock:
            return any(predicate(p) for p in self.patches)

    def close(self):
        self.client.shutdown()


def create_devices(registry, host, ca_pem):
    import base64

    names = {
        "a1": ({"building": "43"}, True),
        "a2": ({"building": "43"}, True),
        "a3": ({"building": "43"}, False),
        "b1": ({"building": "44"}, True),
    }
    devices, ids = {}, {}
    for short, (tags, online) in names.items():
        device_id = "fleet-%s-%s" % (RUN, short)
        ids[short] = device_id
        key = base64.b64encode(os.urandom(32)).decode()
        registry.create_device_with_sas(device_id, key, base64.b64encode(os.urandom(32)).decode(), "enabled")
        registry.update_twin(device_id, Twin(tags=dict(tags, run=RUN)), "*")
        if online:
            cs = "HostName=%s;DeviceId=%s;SharedAccessKey=%s" % (host, device_id, key)
            devices[short] = Device(device_id, cs, ca_pem)
    say("devices", json.dumps(ids, sort_keys=True))
    return devices, ids


def configurations(manager, devices, ids):
    condition = "tags.building = '43' AND tags.run = '%s'" % RUN
    cfg_id = "fleet-%s-main" % RUN
    created = manager.create_configuration(
        Configuration(
            id=cfg_id,
            schema_version="1.0",
            labels={"purpose": "interop"},
            content=ConfigurationContent(device_content={"properties.desired.telemetry": {"interval": 15}}),
            target_condition=condition,
            priority=10,
            metrics=ConfigurationMetrics(
                queries={"reporting15": "SELECT deviceId FROM devices WHERE properties.reported.interval = 15"}
            ),
        )
    )
    check(created.id == cfg_id and created.etag, "create_configuration answered the configuration")
    # The connected devices of building 43 see the desired patch.
    for short in ("a1", "a2"):
        wait_for(
            "%s to see the configuration's desired patch" % short,
            lambda: devices[short].saw(lambda p: (p.get("telemetry") or {}).get("interval") == 15),
        )
    check(
        not devices["b1"].saw(lambda p: "telemetry" in p),
        "the device of building 44 got no configuration",
    )

    def metrics():
        got = manager.get_configuration(cfg_id)
        results = got.system_metrics.results
        custom = got.metrics.results or {}
        if results.get("appliedCount") == 3 and results.get("targetedCount") == 3 and custom.get("reporting15") == 2:
            return got
        return None

    got = wait_for("appliedCount 3, targetedCount 3, reporting15 2", metrics)
    say("configuration", json.dumps({"system": got.system_metrics.results, "custom": got.metrics.results}, sort_keys=True))
    check(got.labels == {"purpose": "interop"}, "labels kept")

    # A lower-priority configuration on the same devices applies nowhere.
    low_id = "fleet-%s-low" % RUN
    manager.create_configuration(
        Configuration(
            id=low_id,
            content=ConfigurationContent(device_content={"properties.desired.telemetry": {"interval": 99}}),
            target_condition=condition,
            priority=1,
        )
    )
    low = wait_for(
        "the low-priority configuration's targetedCount",
        lambda: (lambda c: c if c.system_metrics.results.get("targetedCount") == 3 else None)(
            manager.get_configuration(low_id)
        ),
    )
    check(low.system_metrics.results.get("appliedCount") == 0, "the lower priority applies nowhere: %r" % low.system_metrics.results)

    got.labels = {"purpose": "interop", "updated": "yes"}
    updated = manager.update_configuration(got, got.etag)
    check(updated.labels.get("updated") == "yes" and updated.etag != got.etag, "update_configuration")
    listed = [c.id for c in manager.get_configurations(max_count=100)]
    check(cfg_id in listed and low_id in listed, "get_configurations lists both: %r" % listed)
    manager.delete_configuration(low_id)
    listed = [c.id for c in manager.get_configurations(max_count=100)]
    check(low_id not in listed, "delete_configuration")
    say("configuration-updated", json.dumps({"listed": sorted(listed)}))


def wait_job(jobs, job_id, status="completed"):
    return wait_for(
        "job %s to be %s" % (job_id, status),
        lambda: (lambda j: j if j.status == status else None)(jobs.get_scheduled_job(job_id)),
    )


def method_job(jobs, registry, devices, ids):
    job_id = "fleet-%s-method" % RUN
    request = JobRequest(
        job_id=job_id,
        type="scheduleDeviceMethod",
        cloud_to_device_method=CloudToDeviceMethod(
            method_name="reboot", payload={"delay": 0}, response_timeout_in_seconds=10
        ),
        query_condition="tags.building = '43' AND tags.run = '%s'" % RUN,
        start_time=datetime.datetime.now(datetime.timezone.utc),
        max_execution_time_in_seconds=120,
    )
    created = jobs.create_scheduled_job(job_id, request)
    check(created.job_id == job_id and created.type == "scheduleDeviceMethod", "create_scheduled_job")
    job = wait_job(jobs, job_id)
    s = job.device_job_statistics
    check(
        (s.device_count, s.succeeded_count, s.failed_count, s.pending_count) == (3, 2, 1, 0),
        "statistics: %r" % s.as_dict(),
    )
    # Per-device outcomes, as IoT Hub gives them: a query over devices.jobs.
    # IoTHubRegistryManager.query_iot_hub reads every item as a Twin (dropping the outcome),
    # so the SDK's own query operation is called with raw=True and its JSON read as is.
    spec = QuerySpecification(query="SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '%s'" % job_id)
    raw = registry.protocol.query.get_twins(spec, raw=True)
    check(raw.response.headers.get("x-ms-item-type") == "deviceJob", "device job items")
    outcomes = {item["deviceId"]: item for item in raw.response.json()}
    check(len(outcomes) == 3, "three device jobs: %r" % outcomes)
    for short in ("a1", "a2"):
        o = outcomes[ids[short]]
        answer = o["outcome"]["deviceMethodResponse"]
        check(o["status"] == "completed" and answer["status"] == 200, "outcome of %s: %r" % (short, o))
        check(answer["payload"]["device"] == ids[short], "each device answered itself: %r" % answer)
        check(devices[short].methods == [("reboot", {"delay": 0})], "%s was invoked once" % short)
    offline = outcomes[ids["a3"]]
    check(offline["status"] == "failed" and offline["error"]["code"] == "DeviceNotOnline", "offline: %r" % offline)
    check(devices["b1"].methods == [], "building 44 was not invoked")
    say("method-job", json.dumps({d: o["status"] for d, o in sorted(outcomes.items())}))


def twin_job(jobs, registry, devices, ids):
    job_id = "fleet-%s-twin" % RUN
    request = JobRequest(
        job_id=job_id,
        type="scheduleUpdateTwin",
        update_twin=Twin(
            tags={"ring": "early"},
            properties=TwinProperties(desired={"mode": "eco"}),
            etag="*",
        ),
        query_condition="deviceId IN ['%s', '%s']" % (ids["a1"], ids["b1"]),
        start_time=datetime.datetime.now(datetime.timezone.utc),
        max_execution_time_in_seconds=120,
    )
    jobs.create_scheduled_job(job_id, request)
    job = wait_job(jobs, job_id)
    check(job.device_job_statistics.succeeded_count == 2, "twin job: %r" % job.device_job_statistics.as_dict())
    for short in ("a1", "b1"):
        twin = registry.get_twin(ids[short])
        check(twin.tags.get("ring") == "early", "tags written on %s" % short)
        check(twin.properties.desired.get("mode") == "eco", "desired written on %s" % short)
        wait_for("%s to see mode eco" % short, lambda: devices[short].saw(lambda p: p.get("mode") == "eco"))
    check(registry.get_twin(ids["a2"]).tags.get("ring") is None, "a2 was not in the condition")
    say("twin-job", job.status)


def scheduled(jobs):
    job_id = "fleet-%s-later" % RUN
    request = JobRequest(
        job_id=job_id,
        type="scheduleDeviceMethod",
        cloud_to_device_method=CloudToDeviceMethod(method_name="reboot", payload={}),
        query_condition="tags.run = '%s'" % RUN,
        start_time=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
        max_execution_time_in_seconds=60,
    )
    created = jobs.create_scheduled_job(job_id, request)
    check(created.status == "scheduled", "a job in an hour is scheduled: %r" % created.status)
    cancelled = jobs.cancel_scheduled_job(job_id)
    check(cancelled.status == "cancelled", "cancel_scheduled_job: %r" % cancelled.status)
    check(jobs.get_scheduled_job(job_id).status == "cancelled", "it stays cancelled")
    found = jobs.query_scheduled_jobs("scheduleDeviceMethod", "cancelled")
    check(job_id in [j["jobId"] for j in found.items], "query_scheduled_jobs finds it: %r" % found.items)
    done = jobs.query_scheduled_jobs("scheduleDeviceMethod", "completed")
    check("fleet-%s-method" % RUN in [j["jobId"] for j in done.items], "query by status")
    twins = jobs.query_scheduled_jobs("scheduleUpdateTwin", None)
    check([j["jobId"] for j in twins.items if j["jobId"].startswith("fleet-%s" % RUN)] == ["fleet-%s-twin" % RUN], "query by type")
    say("scheduled", cancelled.status)


def after_restart(jobs, configs, run):
    """The hub restarted over the same directory: jobs and configurations are still there."""
    job = jobs.get_scheduled_job("fleet-%s-method" % run)
    s = job.device_job_statistics
    check(job.status == "completed" and (s.device_count, s.succeeded_count) == (3, 2), "the method job survived")
    check(jobs.get_scheduled_job("fleet-%s-later" % run).status == "cancelled", "the cancelled job stays cancelled")
    cfg_id = "fleet-%s-main" % run
    got = wait_for(
        "appliedCount 3 and targetedCount 3 after the restart",
        lambda: (lambda c: c if c.system_metrics.results == {"appliedCount": 3, "targetedCount": 3} else None)(
            configs.get_configuration(cfg_id)
        ),
    )
    check(got.labels.get("updated") == "yes", "the updated configuration survived")
    say("after-restart", json.dumps(got.system_metrics.results, sort_keys=True))


def main():
    cs = os.environ["IOT_SERVICE_CS"]
    with open(os.environ["IOT_CA_PEM"]) as f:
        ca_pem = f.read()
    registry = IoTHubRegistryManager.from_connection_string(cs)
    jobs = IoTHubJobManager.from_connection_string(cs)
    configs = IoTHubConfigurationManager.from_connection_string(cs)
    if sys.argv[1:2] == ["after-restart"]:
        after_restart(jobs, configs, sys.argv[2])
        say("ok")
        return 0
    say("run", RUN)
    devices, ids = create_devices(registry, "localhost", ca_pem)
    try:
        configurations(configs, devices, ids)
        method_job(jobs, registry, devices, ids)
        twin_job(jobs, registry, devices, ids)
        scheduled(jobs)
    finally:
        for d in devices.values():
            d.close()
    say("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
