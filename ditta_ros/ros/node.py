"""ditta_node: the lifecycle node that serves DiTTA labels for a camera stream.

Data path (ros/data_path.py): camera message -> ``image`` decode -> ``Session.push`` ->
``Result`` -> label, colour, overlay and confidence images with the input's header; ~/status
and /diagnostics: ros/status_report.py.

Lifecycle (ros2/demos lifecycle_py style, one job per callback):
- configure: parameters -> frozen configs, device check, class list, model + SAM2 + session,
  optional saved adaptation; publishers, timers. Any failure -> FAILURE with one log line
  naming the parameter, the value and the fix; nothing loaded stays behind.
- activate: label info (transient local), then the image subscription and the worker.
- deactivate: stop the subscription and the worker; the session (and its adaptation) stays.
- cleanup: free the session and models (CUDA cache too); shutdown: deactivate + cleanup.

Threads: the subscription callback only hands the message to a latest-frame-wins slot; one
worker thread decodes, pushes and publishes (ros/data_path.py); the session adapts in its own
background thread; services run in a reentrant group, so they answer while the model runs.

Logs: the node installs the one bridge that sends the engine's Python log records to its
ROS logger (so they reach /rosout); each phase change is one INFO line, a failed adaptation
one WARN line with the reason. Stopping: :func:`main` handles SIGINT and SIGTERM itself, so
the shutdown transition (``on_shutdown``) runs while the ROS context is still valid, and the
process exits with status 0 without an error line.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from ditta_ros.config import DittaConfig, NodeConfig
from ditta_ros.engine.types import SessionStatus
from ditta_ros.errors import ConfigError, DittaError
from ditta_ros.labels import ClassSet, load_classes
from ditta_ros.msg import AdaptationStatus
from ditta_ros.ros import outputs
from ditta_ros.ros.data_path import DataPath, FrameTarget
from ditta_ros.ros.loading import (
    LATCHED_QOS,
    STATUS_QOS,
    LoadedSession,
    SessionFactory,
    StreamSession,
    check_device,
    default_session_factory,
    input_qos,
    named,
    output_qos,
)
from ditta_ros.ros.log_bridge import install_bridge
from ditta_ros.ros.parameters import (
    build_configs,
    declare_parameters,
    read_values,
    refusal,
    spec_by_name,
)
from ditta_ros.ros.process import StopRequest, run
from ditta_ros.ros.services import SERVICES, Action, serve
from ditta_ros.ros.status_report import NodeView, StatusReport
from ditta_ros.ros.stream_health import StreamHealth

# Re-exported: tests and tools build sessions and factories through this module.
__all__ = ["LATCHED_QOS", "DittaNode", "LoadedSession", "SessionFactory",
           "default_session_factory", "main", "run"]


class DittaNode(LifecycleNode):
    """The DiTTA lifecycle node. ``session_factory`` replaces model loading (tests only)."""

    def __init__(self, node_name: str = "ditta_node", *,
                 session_factory: SessionFactory | None = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._factory = session_factory or default_session_factory
        self._lock = threading.RLock()           # guards the fields set in configure/cleanup
        self._lifecycle = "unconfigured"
        self._session: StreamSession | None = None
        self._num_classes = 0
        self._engine_cfg: DittaConfig | None = None
        self._node_cfg: NodeConfig | None = None
        self._classes: ClassSet | None = None
        self._names: tuple[str, ...] = ()
        self._out_pubs: dict[str, Any] = {}
        self._periodic: list[Any] = []
        self._subscription: Any = None
        self._health = StreamHealth(log_period=5.0)
        self._remove_bridge = install_bridge(self.get_logger())
        self._last_error = ""                    # why the last configure failed
        self._param_problems = declare_parameters(self)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._status_pub = self.create_publisher(AdaptationStatus, "~/status", STATUS_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._report = StatusReport(self._health, self._view,
                                    lambda: self.get_clock().now().to_msg(), self.get_logger(),
                                    self._status_pub.publish, self._diag_pub.publish,
                                    self.get_fully_qualified_name())
        self._data_path = DataPath(self._health, self._frame_target, self._publish_output,
                                   self.get_logger(), self._report.publish)
        for name, action in SERVICES.items():
            self.create_service(Trigger, f"~/{name}", functools.partial(self._serve, action),
                                callback_group=self._service_group)
        self.publish_status()

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load()
        except Exception as err:  # noqa: BLE001 - any load failure must leave nothing behind
            # DittaErrors carry the parameter and the fix; anything else is a bug or an
            # environment problem (e.g. out of memory): say what raised it.
            text = str(err) if isinstance(err, DittaError) else f"{type(err).__name__}: {err}"
            self._last_error = f"configure failed: {text}"
            self.get_logger().error(self._last_error)
            self._unload()
            self.publish_status()
            return TransitionCallbackReturn.FAILURE
        self._last_error = ""
        self._set_lifecycle("inactive")
        self.get_logger().info(f"configured: {self._num_classes} classes, {self._describe()}")
        return super().on_configure(state)

    def _describe(self) -> str:
        engine, node, classes = self._engine_cfg, self._node_cfg, self._classes
        if engine is None or node is None or classes is None:
            return "not configured"
        return (f"class set {classes.name!r}, device {engine.model.device}, transport "
                f"{node.transport}, warm-up {engine.adaptation.warmup_frames} frames")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)            # enables the lifecycle publishers
        node_cfg = self._node_cfg
        if node_cfg is None:  # the lifecycle only activates a configured node
            return TransitionCallbackReturn.FAILURE
        header = Header()
        header.stamp = self.get_clock().now().to_msg()
        if "label_info" in self._out_pubs:
            self._out_pubs["label_info"].publish(outputs.label_info(self._names, header))
        self._data_path.start()
        msg_type, topic = ((CompressedImage, "image/compressed")
                           if node_cfg.transport == "compressed" else (Image, "image"))
        self._subscription = self.create_subscription(
            msg_type, topic, self._data_path.on_image, input_qos(node_cfg),
            callback_group=self._input_group,
            event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))
        # Log first: ~/status saying "active" is what a supervisor waits for, and the log
        # line must already be out when it acts (e.g. stops the node right away).
        self.get_logger().info(f"active: listening on {self._subscription.topic_name}")
        self._set_lifecycle("active")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._set_lifecycle("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unload()
        self._set_lifecycle("unconfigured")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._unload()
        self._set_lifecycle("finalized")
        self.get_logger().info("shut down: input stopped, session and models released")
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing everything")
        self._stop_input()
        self._unload()
        self._set_lifecycle("unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop the input and free everything configure loaded, whatever the state."""
        self._stop_input()
        self._unload()

    def destroy_node(self) -> None:
        self._remove_bridge()
        super().destroy_node()

    def autostart_if_requested(self) -> bool:
        """Configure and activate when the ``autostart`` parameter says so; True if active."""
        if not self.get_parameter("autostart").value:
            return False
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed (see above); the node stays "
                                    "unconfigured: fix the parameter and configure again")
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        """Everything configure needs, in order; raises DittaError naming the parameter."""
        if self._param_problems:
            raise ConfigError("; ".join(self._param_problems.values()))
        engine_cfg, node_cfg = build_configs(read_values(self))
        check_device("model.device", engine_cfg.model.device)
        if engine_cfg.teacher.device:
            check_device("teacher.device", engine_cfg.teacher.device)
        try:
            classes = load_classes(node_cfg.classes)
        except DittaError as err:
            raise named("classes", node_cfg.classes, err) from err
        loaded = self._factory(engine_cfg, self._report.on_session_status)
        with self._lock:
            self._session, self._num_classes = loaded.session, loaded.num_classes
            self._engine_cfg, self._node_cfg, self._classes = engine_cfg, node_cfg, classes
        if classes.num_classes < loaded.num_classes:
            raise ConfigError(
                f"parameter 'classes' = {node_cfg.classes!r} names {classes.num_classes} "
                f"classes but the model predicts {loaded.num_classes}: give a class list with "
                "at least that many entries")
        self._names = classes.names[: loaded.num_classes]
        if node_cfg.adaptation_file:
            try:
                loaded.session.load_adaptation(node_cfg.adaptation_file)
            except DittaError as err:
                raise named("adaptation_file", node_cfg.adaptation_file, err) from err
        self._create_outputs(node_cfg)
        self._health.reset()
        self._report.reset()

    def _create_outputs(self, node_cfg: NodeConfig) -> None:
        qos = output_qos(node_cfg)
        pubs = self._out_pubs
        events = PublisherEventCallbacks(use_default_callbacks=False)  # see loading.py
        for name in ("labels", "labels_color", "overlay", "confidence"):
            pubs[name] = self.create_lifecycle_publisher(Image, f"~/{name}", qos,
                                                         event_callbacks=events)
        try:
            from vision_msgs.msg import LabelInfo
        except ImportError:
            self.get_logger().warning(
                "vision_msgs is not installed: ~/label_info is not published (install "
                "ros-<distro>-vision-msgs, or colcon build this package to get a minimal one)")
        else:
            pubs["label_info"] = self.create_lifecycle_publisher(
                LabelInfo, "~/label_info", LATCHED_QOS, event_callbacks=events)
        self._restart_timers(node_cfg)

    def _restart_timers(self, node_cfg: NodeConfig) -> None:
        for timer in self._periodic:
            self.destroy_timer(timer)
        self._periodic = []
        if node_cfg.status_rate > 0:
            self._periodic.append(self.create_timer(1.0 / node_cfg.status_rate,
                                                  self.publish_status,
                                                  callback_group=self._timer_group))
        if node_cfg.diagnostics_rate > 0:
            self._periodic.append(self.create_timer(1.0 / node_cfg.diagnostics_rate,
                                                  self._report.publish_diagnostics,
                                                  callback_group=self._timer_group))

    def _unload(self) -> None:
        """Release everything configure made: publishers, timers, session, models."""
        for timer in self._periodic:
            self.destroy_timer(timer)
        self._periodic = []
        for pub in self._out_pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._out_pubs = {}
        with self._lock:
            session, self._session = self._session, None
            device = self._engine_cfg.model.device if self._engine_cfg else "cpu"
            self._engine_cfg = self._node_cfg = self._classes = None
            self._num_classes, self._names = 0, ()
        if session is not None:
            session.close()
            del session
        gc.collect()
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _stop_input(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        if not self._data_path.stop(timeout=60.0):
            self.get_logger().error("the worker thread did not stop within 60 s")

    def _set_lifecycle(self, label: str) -> None:
        self._lifecycle = label
        self.publish_status()

    @property
    def lifecycle_label(self) -> str:
        return self._lifecycle

    # ------------------------------------------------------------------ data path

    def _frame_target(self) -> FrameTarget | None:
        """What the data path needs for one frame; None when not configured."""
        with self._lock:
            session, node_cfg, classes = self._session, self._node_cfg, self._classes
            if session is None or node_cfg is None or classes is None:
                return None
            return FrameTarget(session, node_cfg, classes.palette, self._num_classes)

    def _publish_output(self, name: str, image: Image) -> None:
        self._out_pubs[name].publish(image)

    # ------------------------------------------------------------------ status

    def _view(self) -> NodeView:
        with self._lock:
            return NodeView(self._lifecycle, self._session, self._last_error)

    def status_message(self, message: str = "", status: SessionStatus | None = None
                       ) -> AdaptationStatus:
        """~/status now; ``status``: a session snapshot to report instead of a fresh one."""
        return self._report.message(message, status)

    def publish_status(self, message: str = "", status: SessionStatus | None = None) -> None:
        self._report.publish(message, status)

    # ------------------------------------------------------------------ services

    def _serve(self, action: Action, request: Trigger.Request,
               response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            session = self._session
        response.success, response.message = serve(
            action, session, self._lifecycle, str(self.get_parameter("adaptation_file").value))
        if session is not None:
            self.get_logger().info(f"service: {response.message}")
            self.publish_status()
        return response

    # ------------------------------------------------------------------ parameters

    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Refuse configure-time settings while configured, and invalid values always."""
        declared = all(self.has_parameter(name) for name in spec_by_name())
        reason = refusal({p.name: p.value for p in params},
                         read_values(self) if declared else {},
                         configured=self._lifecycle in ("inactive", "active"))
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """Live node settings take effect at once; a bad start-up value, once replaced, no
        longer fails configure."""
        for param in params:
            self._param_problems.pop(param.name, None)
        with self._lock:
            if self._node_cfg is None:
                return
            _, node_cfg = build_configs(read_values(self))
            rates_changed = (node_cfg.status_rate != self._node_cfg.status_rate
                             or node_cfg.diagnostics_rate != self._node_cfg.diagnostics_rate)
            self._node_cfg = node_cfg
        if rates_changed:
            self._restart_timers(node_cfg)
        names = ", ".join(p.name for p in params)
        self.get_logger().info(f"parameters applied: {names}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ditta_node`` (ros2 run ditta_ros ditta_node --ros-args ...): exit
    status 0 after SIGINT or SIGTERM, with the shutdown transition run (see process.py)."""
    stop = StopRequest()
    stop.install()
    rclpy.init(args=list(argv) if argv is not None else None,
               signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = DittaNode()
        run(node, MultiThreadedExecutor(), stop)
    except KeyboardInterrupt:
        pass                            # a signal before the node existed: nothing to free
    finally:
        rclpy.try_shutdown()
    if stop.event.is_set():
        # Stopped by a signal with everything released: leave now. The interpreter's own
        # teardown of torch, transformers and sam2 takes seconds on a loaded machine, and
        # ros2 launch escalates to SIGTERM 5 s after its SIGINT.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
