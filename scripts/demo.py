"""The demo's driver (scripts/demo.sh runs it after setting up and building): starts
edgesplit-server with the demo's models and runs edgesplit-device with a config of two model
streams, or with the single stream the arguments describe.

As root (and where network namespaces work) the server and the device run in the testbed's two
namespaces (bench/testbed/netbed.py) joined by a shaped link that gets slow part-way through, with
the device slowed down by a cgroup CPU quota; otherwise, or with --loopback, both run on loopback.
Standard library only (/usr/bin/python3). Exits with the device's status.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "bench", "testbed"))
import netbed  # noqa: E402

BIN = os.path.join(REPO, "build", "bin")
SHARED = os.environ.get("EDGESPLIT_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))
DEFAULT_MODEL = os.path.join(REPO, "models", "default", "fashion_mnist_cnn.pt")
DEFAULT_SAMPLES = os.path.join(REPO, "models", "default", "samples")
# ResNet-56 rather than ResNet-20: on a tenth of a core ResNet-20's frames (~1 ms at full speed)
# mostly fit within the quota, so local stays the fastest plan on any link and nothing moves.
RESNET = os.path.join(SHARED, "models", "resnet_cifar10", "resnet56_cifar10.pt")
CIFAR = os.path.join(SHARED, "data", "cifar10-test")
PORT = 5555

# The link in the testbed: (seconds from the device's start, Mbit/s, round trip ms).
# 5 Mbit/s rather than 1: on a sudden drop to 1 Mbit/s the device's bandwidth probe (sized for the
# old link) times out, the link is called lost and local frames stall behind the reconnection.
LINK_STEPS = [(0, 100, 5), (10, 5, 100)]
# The device gets a tenth of one core (a small board beside a server). A CPU quota only slows
# what outlasts it: the default model's ~1 ms frames still run at full speed, so its scheduler
# keeps it local on any link; ResNet-56's frames are slowed enough to be worth offloading.
SLOWDOWN = 10
LOAD_S = 2  # the device's time to load its models at full speed, before the quota applies
DURATION_S = 25  # the streams' frames at their rates (the run also loads the models first)
FPS = (10, 5)  # the two streams' frame rates

# The edgesplit-device flags that describe a stream; with any of them the demo runs that one
# stream as the flags say (the old single-model demo) instead of its two-stream config.
STREAM_FLAGS = {"--model", "--meta", "--input", "--max-frames", "--loop", "--cut", "--bits",
                "--plan", "--profile", "--objective", "--max-accuracy-drop", "--max-latency-ms",
                "--min-fps", "--max-bytes-per-frame", "--max-server-ms", "--server-price",
                "--lossless", "--clip-percentile", "--per-channel", "--top-k", "--in-flight",
                "--local-lane", "--timeout-ms", "--fps", "--priority", "--stream"}


def say(text):
    print(text, file=sys.stderr, flush=True)


def flag_name(arg):
    return arg.split("=", 1)[0]


def option_value(args, name):
    """The value of `name` in args (--name V or --name=V), or None."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def cifar_images(work):
    """200 CIFAR-10 test images (20 per class), interleaved by class and named NNN_class.jpg, and
    their labels; None without ../shared."""
    images = os.path.join(CIFAR, "images")
    if not (os.path.exists(RESNET) and os.path.isdir(images)):
        return None
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    folder = os.path.join(work, "cifar10")
    os.makedirs(folder)
    labels = []
    n = 0
    for i in range(20):
        for k, c in enumerate(classes):
            src = os.path.join(images, "%s_%04d.jpg" % (c, i))
            if not os.path.exists(src):
                return None
            name = "%03d_%s.jpg" % (n, c)
            os.symlink(src, os.path.join(folder, name))
            labels.append("%s\t%d\n" % (name, k))
            n += 1
    with open(os.path.join(work, "cifar10.labels"), "w") as f:
        f.writelines(labels)
    return folder


def resnet_profile(work, images):
    """A small profile of the ResNet (a few seconds): the first 50 images calibrate, the other 150
    are scored."""
    out = os.path.join(work, os.path.basename(RESNET).replace(".pt", ".profile.json"))
    r = subprocess.run([os.path.join(BIN, "edgesplit-profile"), "--model", RESNET, "--images",
                        images, "--labels", os.path.join(work, "cifar10.labels"), "--out", out,
                        "--calibration", "50", "--bits", "2,4,6,8,fp16", "--lossless", "none",
                        "--jpeg", "50,90", "--cuts", "auto", "--threads", "1", "--quiet"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit("demo: edgesplit-profile failed:\n" + r.stderr)
    return out


def two_streams(work):
    """The demo's config streams and the server's --model/--profile pairs."""
    main = {"name": "fashion", "model": DEFAULT_MODEL, "input": DEFAULT_SAMPLES, "fps": FPS[0],
            "loop": 0, "max_frames": FPS[0] * DURATION_S, "top_k": 1, "objective": "latency",
            "constraints": {"max_accuracy_drop": 1}}
    served = [(DEFAULT_MODEL, None)]
    images = cifar_images(work)
    if images:
        profile = resnet_profile(work, images)
        second = {"name": "resnet56", "model": RESNET, "input": images, "profile": profile,
                  "fps": FPS[1], "loop": 0, "max_frames": FPS[1] * DURATION_S, "top_k": 1,
                  "objective": "latency", "constraints": {"max_accuracy_drop": 1}}
        served.append((RESNET, profile))
        what = ["[fashion]  the default model (Fashion-MNIST CNN), %g frames/s, lowest latency"
                % FPS[0],
                "[resnet56] ResNet-56 on CIFAR-10 (profiled just now), %g frames/s, lowest latency"
                % FPS[1]]
    else:
        second = {"name": "fashion-data", "model": DEFAULT_MODEL, "input": DEFAULT_SAMPLES,
                  "fps": FPS[1], "loop": 0, "max_frames": FPS[1] * DURATION_S, "top_k": 1,
                  "objective": "data", "constraints": {"max_accuracy_drop": 1}}
        what = ["[fashion]      the default model (Fashion-MNIST CNN), %g frames/s, lowest latency"
                % FPS[0],
                "[fashion-data] the same model, %g frames/s, fewest bytes sent (ResNet-56 needs %s)"
                % (FPS[1], os.path.relpath(os.path.dirname(RESNET), REPO))]
    return [main, second], served, what


def server_argv(endpoint, served, endpoint_file, extra=()):
    argv = [os.path.join(BIN, "edgesplit-server"), "--bind", endpoint, "--threads", "1",
            "--log-level", "error", "--endpoint-file", endpoint_file]
    # --profile pairs with the --model at the same position: give one for each or none.
    for model, _ in served:
        argv += ["--model", model]
    if any(p for _, p in served):
        for model, profile in served:
            argv += ["--profile", profile or os.path.splitext(model)[0] + ".profile.json"]
    return argv + list(extra)


def wait_for_server(proc, endpoint_file):
    deadline = time.monotonic() + 120
    while not (os.path.exists(endpoint_file) and os.path.getsize(endpoint_file) > 0):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("demo: edgesplit-server did not start")
        time.sleep(0.1)
    with open(endpoint_file) as f:
        return f.read().strip()


def describe_link(rate, rtt):
    return "%g Mbit/s %g ms round trip" % (rate, rtt)


def run(args):
    netbed.install_signal_handlers()  # Ctrl-C and SIGTERM unwind through the cleanup below
    work = tempfile.mkdtemp(prefix="edgesplit-demo-")
    testbed = None
    server = device = None
    try:
        # What runs: the two-stream config, or the one stream the arguments describe.
        single = any(flag_name(a) in STREAM_FLAGS for a in args.device_args)
        if single:
            model = option_value(args.device_args, "--model") or DEFAULT_MODEL
            meta = option_value(args.device_args, "--meta")
            served = [(model, None)]
            server_extra = ["--meta", meta] if meta else []
            device_tail = list(args.device_args)
            if "--model" not in [flag_name(a) for a in args.device_args]:
                device_tail = ["--model", DEFAULT_MODEL, "--input", DEFAULT_SAMPLES] + device_tail
            if "--top-k" not in [flag_name(a) for a in args.device_args]:
                device_tail = ["--top-k", "3"] + device_tail
            if "--threads" not in [flag_name(a) for a in args.device_args]:
                device_tail = ["--threads", "1"] + device_tail
            say("== one stream, as the arguments say: %s" % " ".join(args.device_args))
        else:
            streams, served, what = two_streams(work)
            server_extra = []
            config = os.path.join(work, "device.json")
            with open(config, "w") as f:
                json.dump({"threads": 1, "streams": streams}, f, indent=1)
            device_tail = ["--config", config] + list(args.device_args)
            say("== one edgesplit-device process, two model streams; for every frame each stream's "
                "scheduler picks where to cut the network and how many bits to send, within 1 "
                "point of top-1 accuracy:\n   " + "\n   ".join(what))

        # Where it runs: the testbed's namespaces and shaped link, or loopback.
        if args.loopback:
            problem = "--loopback"
        elif os.geteuid() != 0:
            problem = "not root"
        else:
            problem = netbed.root_problem()
        if problem is None:
            try:
                testbed = netbed.Testbed(slowdown=0)  # the quota comes once the models are loaded
                testbed.__enter__()
            except netbed.TestbedError as e:
                testbed = None
                problem = "the testbed could not start (%s)" % str(e).splitlines()[0]
        endpoint_file = os.path.join(work, "endpoint")
        if testbed:
            rate, rtt = LINK_STEPS[0][1:]
            testbed.set_link(rate, rtt)
            at, rate2, rtt2 = LINK_STEPS[1]
            say("== testbed: device and server in two network namespaces, link %s, slowing to "
                "%s after %d s; the device's CPU is limited to 1/%d of a core"
                % (describe_link(rate, rtt), describe_link(rate2, rtt2), at, SLOWDOWN))
            endpoint = "tcp://%s:%d" % (netbed.SRV_ADDR, PORT)
            server = testbed.spawn("srv", server_argv(endpoint, served, endpoint_file,
                                                      server_extra), None, None)
            wait_for_server(server, endpoint_file)
        else:
            say("== loopback: device and server on this machine, no shaping (%s)%s" % (
                problem, "" if args.loopback else "; as root the demo also puts them in network "
                "namespaces on a shaped link that slows down part-way"))
            server = subprocess.Popen(
                server_argv("tcp://127.0.0.1:*", served, endpoint_file, server_extra),
                preexec_fn=os.setpgrp)
            endpoint = wait_for_server(server, endpoint_file)
        say("== edgesplit-server serves %s on %s" % (
            ", ".join(os.path.basename(m) for m, _ in served), endpoint))
        if "--json" not in args.device_args and sys.stdout.isatty():
            say("== per frame: [stream] #frame image  top-1 score  plan (cut id, bits)  latency  "
                "bytes sent  where it ran; a summary every 5 s and at the end")

        # A few frames of each model through the server first, at full speed and unseen: the first
        # runs of a tail are slow (allocation, kernel selection), and a stream that meets them
        # takes the server for a slow one and plans locally for a long while after.
        for model, _ in served:
            inputs = [st["input"] for st in streams if st["model"] == model] if not single else []
            warm = [os.path.join(BIN, "edgesplit-device"), "--server", endpoint, "--model", model,
                    "--input", inputs[0] if inputs else DEFAULT_SAMPLES, "--max-frames", "5",
                    "--cut", "input", "--bits", "8", "--threads", "1", "--quiet", "--output",
                    os.devnull]
            if inputs:
                if testbed:
                    p = testbed.spawn("dev", warm, subprocess.DEVNULL, subprocess.DEVNULL)
                    try:
                        p.wait(60)
                    finally:
                        testbed.stop(p)
                else:
                    subprocess.run(warm, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=60)
        device_argv = [os.path.join(BIN, "edgesplit-device"), "--server", endpoint] + device_tail
        if testbed:
            device = testbed.spawn("dev", device_argv, None, None, in_cgroup=True)
            # Loading the models and their first runs go at full speed (a device that has been
            # on for a while); the frames after that run on a tenth of a core.
            time.sleep(LOAD_S)
            testbed.set_slowdown(SLOWDOWN)
            start = time.monotonic()
            for at, rate, rtt in LINK_STEPS[1:]:
                while device.poll() is None and time.monotonic() - start < at:
                    time.sleep(0.05)
                if device.poll() is not None:
                    break
                testbed.set_link(rate, rtt)
                say("== link now %s ==" % describe_link(rate, rtt))
            rc = device.wait()
        else:
            device = subprocess.Popen(device_argv)
            rc = device.wait()
        return rc
    finally:
        if device is not None and device.poll() is None:
            device.terminate()
            device.wait()
        if testbed:
            testbed.__exit__(None, None, None)  # stops the server, removes namespaces and cgroup
        elif server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--loopback", action="store_true",
                    help="run on loopback even as root (no namespaces, no shaping)")
    ap.add_argument("device_args", nargs=argparse.REMAINDER,
                    help="edgesplit-device flags (after --)")
    args = ap.parse_args()
    if args.device_args and args.device_args[0] == "--":
        args.device_args = args.device_args[1:]
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
