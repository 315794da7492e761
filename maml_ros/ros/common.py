"""Small pieces every maml_ros node shares: validated parameters, status counters, main()."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from maml_ros.ros.interfaces import LATCHED_QOS, STATUS_TOPIC

Validator = Callable[[Any], str | None]
"""Returns None when the value is acceptable, else the reason it is not."""


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: default, description, optional range and validator."""

    name: str
    default: Any
    description: str
    validator: Validator | None = None
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    read_only: bool = False

    def descriptor(self) -> ParameterDescriptor:
        """The rcl descriptor advertised to `ros2 param describe`."""
        desc = ParameterDescriptor(description=self.description, read_only=self.read_only)
        if self.float_range is not None:
            desc.floating_point_range = [
                FloatingPointRange(from_value=self.float_range[0], to_value=self.float_range[1])
            ]
        if self.int_range is not None:
            desc.integer_range = [
                IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=1)
            ]
        return desc

    def check(self, value: Any) -> str | None:
        """The reason `value` is rejected, or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"{self.name} must be finite, got {value}"
        if self.float_range is not None and not (
            self.float_range[0] <= value <= self.float_range[1]
        ):
            return f"{self.name} must be in [{self.float_range[0]}, {self.float_range[1]}]"
        if self.int_range is not None and not (self.int_range[0] <= value <= self.int_range[1]):
            return f"{self.name} must be in [{self.int_range[0]}, {self.int_range[1]}]"
        return self.validator(value) if self.validator else None


class ValidatedParameters:
    """Declares parameters with descriptors and rejects invalid values at start and at run time.

    After a successful change, ``on_change(name, value)`` is called so the node can apply it.
    Current values are read with ``params[name]``.
    """

    def __init__(
        self,
        node: Node,
        specs: Sequence[ParamSpec],
        on_change: Callable[[str, Any], None] | None = None,
        cross_check: Callable[[str, Any], str | None] | None = None,
    ) -> None:
        """``cross_check(name, value)``: a node's own rule across parameters (after each
        spec's check, at start and at run time), None or the reason it refuses the value."""
        self._node = node
        self._specs = {spec.name: spec for spec in specs}
        self._on_change = on_change
        self._cross_check = cross_check
        self._values: dict[str, Any] = {}
        for spec in specs:
            try:
                value = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
            except ParameterException as exc:  # out of the descriptor's range, or the wrong type
                raise ValueError(f"invalid parameter: {exc}") from exc
            reason = self._problem(spec, value)
            if reason is not None:
                raise ValueError(f"invalid parameter: {reason}")
            self._values[spec.name] = value
        node.add_on_set_parameters_callback(self._validate)
        node.add_post_set_parameters_callback(self._apply)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def _problem(self, spec: ParamSpec, value: Any) -> str | None:
        reason = spec.check(value)
        if reason is None and self._cross_check is not None:
            reason = self._cross_check(spec.name, value)
        return reason

    def _validate(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            spec = self._specs.get(param.name)
            if spec is None:
                continue
            if spec.read_only:
                return SetParametersResult(successful=False, reason=f"{param.name} is read-only")
            reason = self._problem(spec, param.value)
            if reason is not None:
                self._node.get_logger().warning(f"rejected parameter change: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply(self, params: list[Parameter]) -> None:
        for param in params:
            if param.name in self._specs:
                self._values[param.name] = param.value
                if self._on_change is not None:
                    self._on_change(param.name, param.value)


class NodeStatus:
    """Counters and fields published as JSON on ``~/status`` (latched); bad-input bookkeeping."""

    def __init__(
        self,
        node: Node,
        period_s: float = 1.0,
        refresh: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``refresh()`` returns fields read fresh at every snapshot (counters that a real-time
        path bumps without taking this status's lock)."""
        self._node = node
        self._refresh = refresh
        self._lock = threading.Lock()
        self._fields: dict[str, Any] = {"pid": os.getpid()}  # a respawned node has a new one
        self._dropped: dict[str, int] = {}
        self._last_reason: dict[str, str] = {}
        self._pub = node.create_publisher(String, STATUS_TOPIC, LATCHED_QOS)
        self._timer = node.create_timer(period_s, self.publish)

    def set(self, **fields: Any) -> None:
        """Sets status fields (JSON-serialisable values)."""
        with self._lock:
            self._fields.update(fields)

    def drop(self, kind: str, reason: str) -> None:
        """Logs, counts and drops one bad input of ``kind``."""
        with self._lock:
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            self._last_reason[kind] = reason
        self._node.get_logger().warning(f"dropped bad {kind}: {reason}", throttle_duration_sec=1.0)

    def dropped(self, kind: str | None = None) -> int:
        """How many inputs (of ``kind``, or of all kinds) were dropped."""
        with self._lock:
            return self._dropped.get(kind, 0) if kind else sum(self._dropped.values())

    def snapshot(self) -> dict[str, Any]:
        """The status as a dict."""
        fresh = self._refresh() if self._refresh is not None else {}
        with self._lock:
            return {
                **self._fields,
                **fresh,
                "dropped": dict(self._dropped),
                "dropped_total": sum(self._dropped.values()),
                "last_drop_reason": dict(self._last_reason),
            }

    def publish(self) -> None:
        """Publishes the status now."""
        self._pub.publish(String(data=json.dumps(self.snapshot(), allow_nan=False)))


class SubscriptionThread:
    """One subscription served by a node, an executor and a thread of its own, beside its
    owner's executor: the real-time path (realtime_tools' idea, in rclpy).

    rclpy rebuilds its wait set in Python at every wake-up, one entry per service, timer and
    event: a lifecycle node's 28 cost about 0.5 ms a message. This node holds the one
    subscription and nothing else (no parameter, type-description or logger services), so a
    message costs what a bare relay's does, and no callback of the owner runs before it.

    The topic is resolved (namespace, remapping) by the owner; the callback and ``idle`` run on
    this thread, concurrently with the owner's callbacks, so what they share is swapped by
    reference or locked. ``idle()`` runs after each message and at least every
    ``idle_period_s``. An exception raised on this thread is re-raised on the owner's executor
    (the process fails as it would for one of the owner's callbacks)."""

    def __init__(
        self,
        owner: Node,
        msg_type: Any,
        topic: str,
        callback: Callable[[Any], None],
        qos: Any,
        *,
        idle: Callable[[], None],
        idle_period_s: float,
        suffix: str = "control_loop",
    ) -> None:
        self.node = rclpy.create_node(
            f"{owner.get_name()}_{suffix}",
            namespace=owner.get_namespace(),
            context=owner.context,
            use_global_arguments=False,  # the owner resolved the remapped name
            enable_rosout=False,
            start_parameter_services=False,
            parameter_overrides=[Parameter("start_type_description_service", value=False)],
        )
        self.node.create_subscription(msg_type, owner.resolve_topic_name(topic), callback, qos)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self.node)
        self._idle = idle
        self._idle_period_s = idle_period_s
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._reraise = owner.create_guard_condition(self._raise_failure)
        self._thread = threading.Thread(
            target=self._spin, name=f"{owner.get_name()}_{suffix}", daemon=True
        )

    def start(self) -> None:
        """Starts serving the subscription (call once the owner is fully built)."""
        self._thread.start()

    def _spin(self) -> None:
        context = self.node.context
        try:
            while not self._stop.is_set() and context.ok():
                self._executor.spin_once(timeout_sec=self._idle_period_s)
                self._idle()
        except ExternalShutdownException:
            pass
        except Exception as err:
            if context.ok() and not self._stop.is_set():
                self._failure = err
                self._reraise.trigger()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        """Stops the thread and destroys the node."""
        self._stop.set()
        self._executor.shutdown(timeout_sec=1.0)  # wakes the thread's wait
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.node.destroy_node()


AUTOSTART = ParamSpec(
    "autostart",
    True,
    "Configure and activate at start-up; false: wait for lifecycle transitions (adapt.launch.py "
    "drives them; by hand: ros2 lifecycle set <node> configure, then activate)",
    read_only=True,
)
"""The lifecycle nodes' first parameter."""


class ManagedNode(LifecycleNode):
    """A lifecycle node whose ``configure`` step may fail with a reason: ``configure_node``
    raises ValueError (invalid input: an unreadable checkpoint, no CUDA, ...), the transition
    fails, the node stays unconfigured and says why (log and ``~/status``). ``activate`` and
    ``deactivate`` switch what the node does to the robot (``activate_node`` /
    ``deactivate_node``). Subclasses set ``self.params`` (with :data:`AUTOSTART`) and
    ``self.status`` in ``__init__`` and call :meth:`autostart` last."""

    params: ValidatedParameters
    status: NodeStatus
    configure_error: str | None = None

    def configure_node(self) -> None:
        """Loads what the node needs; raises ValueError with the reason it cannot."""

    def activate_node(self) -> None:
        """Starts acting on the robot."""

    def deactivate_node(self) -> None:
        """Stops acting on the robot, leaving it safe."""

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.configure_node()
        except ValueError as err:
            self.configure_error = str(err)
            self.get_logger().error(f"configure failed: {err}")
            self._lifecycle_status("unconfigured", reason=str(err))
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        self._lifecycle_status("inactive")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate_node()
        self._lifecycle_status("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate_node()
        self._lifecycle_status("inactive")
        return super().on_deactivate(state)

    def _lifecycle_status(self, label: str, reason: str | None = None) -> None:
        fields = {"lifecycle": label}
        if reason is not None:
            fields["lifecycle_reason"] = reason
        self.status.set(**fields)
        self.status.publish()

    def autostart(self) -> None:
        """Configure and activate now when ``autostart`` is on; ValueError (run_node: exit
        code 2) when configuring fails."""
        self.status.set(lifecycle="unconfigured")
        if not self.params["autostart"]:
            self.status.publish()
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise ValueError(self.configure_error or "configure failed")
        self.trigger_activate()


class NextSpin:
    """Awaitable that gives the executor back once (rclpy resumes the coroutine callback at its
    next wake-up): a service callback that waits for another thread without holding the
    executor awaits it in a loop."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def stamp_to_ns(stamp: Time) -> int:
    """A builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds as a builtin_interfaces/Time."""
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def set_realtime_priority(priority: int) -> str | None:
    """Puts every thread of this process under SCHED_FIFO at ``priority`` (Linux); threads
    started later inherit it from their creator. Returns None, or why it was refused (it needs
    CAP_SYS_NICE or an rtprio limit, as ros2_control's ``thread_priority`` does)."""
    try:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as err:  # AttributeError: not Linux
        return f"{type(err).__name__}: {err}"
    return None


def run_node(node_class: type[Node], args: Sequence[str] | None = None) -> int:
    """Spins a node of ``node_class`` until shutdown; returns the process exit code.

    0 after a shutdown (SIGINT, SIGTERM, ``rclpy.shutdown``); 2 when the node cannot start
    (a ``ValueError`` from its constructor: invalid parameters, an unreadable checkpoint),
    logged as one FATAL line under the node's own name, so a launch shows which node failed.

    Every node here keeps its long work on a thread of its own and its callbacks short, so a
    SingleThreadedExecutor serves it. rclpy's MultiThreadedExecutor hands each callback to a
    thread pool through the GIL: with a 250 Hz stream it managed 10-30 callbacks/s on 2 cores.
    """
    shutdown_signalled = _watch_for_sigint()
    rclpy.init(args=args)
    # Two-phase construction keeps a reference to a node whose constructor raises, so its
    # error is logged under its (possibly remapped) name rather than a generic one.
    node = node_class.__new__(node_class)
    started = False
    try:
        node.__init__()
        started = True
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as err:
        if started:
            raise
        _logger_of(node).fatal(str(err))
        return 2
    except Exception:
        if rclpy.ok() and not shutdown_signalled.is_set():
            raise
        # A SIGINT that lands while the executor takes a message surfaces as the binding's
        # "Unable to convert call argument" RuntimeError, sometimes before rclpy's signal
        # thread has shut the context down: that is a shutdown, not a failure.
    finally:
        # A terminal's Ctrl-C reaches the whole process group, and launch forwards a SIGINT of
        # its own: the second must not interrupt the teardown (Python's KeyboardInterrupt,
        # exit code -2). SIGTERM and SIGKILL still end a teardown that hangs.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if started:
            node.destroy_node()
        else:
            with contextlib.suppress(Exception):  # a half-built node may lack what it destroys
                node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _watch_for_sigint() -> threading.Event:
    """Installs a SIGINT handler that records the signal, then raises KeyboardInterrupt as
    Python's default does; set before ``rclpy.init``, rclpy's own handler chains to it."""
    signalled = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return signalled  # signal handlers can only be installed from the main thread

    def on_sigint(signum: int, frame: object) -> None:
        signalled.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    return signalled


def _logger_of(node: Node) -> RcutilsLogger:
    """The node's logger, or the package's when the node did not get as far as having one."""
    try:
        return node.get_logger()
    except AttributeError:
        return rclpy.logging.get_logger("maml_ros")
