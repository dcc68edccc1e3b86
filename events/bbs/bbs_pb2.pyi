from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Error(_message.Message):
    __slots__ = ("type", "message")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UnknownError: _ClassVar[Error.Type]
        InvalidRecord: _ClassVar[Error.Type]
        InvalidRequest: _ClassVar[Error.Type]
        InvalidResponse: _ClassVar[Error.Type]
        InvalidProtobufMessage: _ClassVar[Error.Type]
        InvalidJSON: _ClassVar[Error.Type]
        FailedToOpenEnvelope: _ClassVar[Error.Type]
        InvalidStateTransition: _ClassVar[Error.Type]
        ResourceConflict: _ClassVar[Error.Type]
        ResourceExists: _ClassVar[Error.Type]
        ResourceNotFound: _ClassVar[Error.Type]
        RouterError: _ClassVar[Error.Type]
        ActualLRPCannotBeClaimed: _ClassVar[Error.Type]
        ActualLRPCannotBeStarted: _ClassVar[Error.Type]
        ActualLRPCannotBeCrashed: _ClassVar[Error.Type]
        ActualLRPCannotBeFailed: _ClassVar[Error.Type]
        ActualLRPCannotBeRemoved: _ClassVar[Error.Type]
        ActualLRPCannotBeUnclaimed: _ClassVar[Error.Type]
        RunningOnDifferentCell: _ClassVar[Error.Type]
        GUIDGeneration: _ClassVar[Error.Type]
        Deserialize: _ClassVar[Error.Type]
        Deadlock: _ClassVar[Error.Type]
        Unrecoverable: _ClassVar[Error.Type]
        LockCollision: _ClassVar[Error.Type]
        Timeout: _ClassVar[Error.Type]
    UnknownError: Error.Type
    InvalidRecord: Error.Type
    InvalidRequest: Error.Type
    InvalidResponse: Error.Type
    InvalidProtobufMessage: Error.Type
    InvalidJSON: Error.Type
    FailedToOpenEnvelope: Error.Type
    InvalidStateTransition: Error.Type
    ResourceConflict: Error.Type
    ResourceExists: Error.Type
    ResourceNotFound: Error.Type
    RouterError: Error.Type
    ActualLRPCannotBeClaimed: Error.Type
    ActualLRPCannotBeStarted: Error.Type
    ActualLRPCannotBeCrashed: Error.Type
    ActualLRPCannotBeFailed: Error.Type
    ActualLRPCannotBeRemoved: Error.Type
    ActualLRPCannotBeUnclaimed: Error.Type
    RunningOnDifferentCell: Error.Type
    GUIDGeneration: Error.Type
    Deserialize: Error.Type
    Deadlock: Error.Type
    Unrecoverable: Error.Type
    LockCollision: Error.Type
    Timeout: Error.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    type: Error.Type
    message: str
    def __init__(self, type: _Optional[_Union[Error.Type, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ModificationTag(_message.Message):
    __slots__ = ("epoch", "index")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    index: int
    def __init__(self, epoch: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("properties",)
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    properties: _containers.ScalarMap[str, str]
    def __init__(self, properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PortRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class ICMPInfo(_message.Message):
    __slots__ = ("type", "code")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    type: int
    code: int
    def __init__(self, type: _Optional[int] = ..., code: _Optional[int] = ...) -> None: ...

class SecurityGroupRule(_message.Message):
    __slots__ = ("protocol", "destinations", "ports", "port_range", "icmp_info", "log", "annotations")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    PORT_RANGE_FIELD_NUMBER: _ClassVar[int]
    ICMP_INFO_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    destinations: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedScalarFieldContainer[int]
    port_range: PortRange
    icmp_info: ICMPInfo
    log: bool
    annotations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol: _Optional[str] = ..., destinations: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[int]] = ..., port_range: _Optional[_Union[PortRange, _Mapping]] = ..., icmp_info: _Optional[_Union[ICMPInfo, _Mapping]] = ..., log: _Optional[bool] = ..., annotations: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricTagValue(_message.Message):
    __slots__ = ("static", "dynamic")
    class DynamicValue(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DynamicValueInvalid: _ClassVar[MetricTagValue.DynamicValue]
        INDEX: _ClassVar[MetricTagValue.DynamicValue]
        INSTANCE_GUID: _ClassVar[MetricTagValue.DynamicValue]
    DynamicValueInvalid: MetricTagValue.DynamicValue
    INDEX: MetricTagValue.DynamicValue
    INSTANCE_GUID: MetricTagValue.DynamicValue
    STATIC_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_FIELD_NUMBER: _ClassVar[int]
    static: str
    dynamic: MetricTagValue.DynamicValue
    def __init__(self, static: _Optional[str] = ..., dynamic: _Optional[_Union[MetricTagValue.DynamicValue, str]] = ...) -> None: ...

class PortMapping(_message.Message):
    __slots__ = ("container_port", "host_port", "container_tls_proxy_port", "host_tls_proxy_port")
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_TLS_PROXY_PORT_FIELD_NUMBER: _ClassVar[int]
    HOST_TLS_PROXY_PORT_FIELD_NUMBER: _ClassVar[int]
    container_port: int
    host_port: int
    container_tls_proxy_port: int
    host_tls_proxy_port: int
    def __init__(self, container_port: _Optional[int] = ..., host_port: _Optional[int] = ..., container_tls_proxy_port: _Optional[int] = ..., host_tls_proxy_port: _Optional[int] = ...) -> None: ...

class ActualLRPKey(_message.Message):
    __slots__ = ("process_guid", "index", "domain")
    PROCESS_GUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    process_guid: str
    index: int
    domain: str
    def __init__(self, process_guid: _Optional[str] = ..., index: _Optional[int] = ..., domain: _Optional[str] = ...) -> None: ...

class ActualLRPInstanceKey(_message.Message):
    __slots__ = ("instance_guid", "cell_id")
    INSTANCE_GUID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    instance_guid: str
    cell_id: str
    def __init__(self, instance_guid: _Optional[str] = ..., cell_id: _Optional[str] = ...) -> None: ...

class ActualLRPNetInfo(_message.Message):
    __slots__ = ("address", "ports", "instance_address", "preferred_address", "instance_ipv6_address")
    class PreferredAddress(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[ActualLRPNetInfo.PreferredAddress]
        INSTANCE: _ClassVar[ActualLRPNetInfo.PreferredAddress]
        HOST: _ClassVar[ActualLRPNetInfo.PreferredAddress]
    UNKNOWN: ActualLRPNetInfo.PreferredAddress
    INSTANCE: ActualLRPNetInfo.PreferredAddress
    HOST: ActualLRPNetInfo.PreferredAddress
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_IPV6_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    ports: _containers.RepeatedCompositeFieldContainer[PortMapping]
    instance_address: str
    preferred_address: ActualLRPNetInfo.PreferredAddress
    instance_ipv6_address: str
    def __init__(self, address: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., instance_address: _Optional[str] = ..., preferred_address: _Optional[_Union[ActualLRPNetInfo.PreferredAddress, str]] = ..., instance_ipv6_address: _Optional[str] = ...) -> None: ...

class ActualLRPInternalRoute(_message.Message):
    __slots__ = ("hostname",)
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    def __init__(self, hostname: _Optional[str] = ...) -> None: ...

class ActualLRP(_message.Message):
    __slots__ = ("actual_lrp_key", "actual_lrp_instance_key", "actual_lrp_net_info", "crash_count", "crash_reason", "state", "placement_error", "since", "modification_tag", "presence", "actual_lrp_internal_routes", "metric_tags", "routable", "availability_zone")
    class Presence(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ORDINARY: _ClassVar[ActualLRP.Presence]
        EVACUATING: _ClassVar[ActualLRP.Presence]
        SUSPECT: _ClassVar[ActualLRP.Presence]
    ORDINARY: ActualLRP.Presence
    EVACUATING: ActualLRP.Presence
    SUSPECT: ActualLRP.Presence
    class MetricTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTUAL_LRP_KEY_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_LRP_INSTANCE_KEY_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_LRP_NET_INFO_FIELD_NUMBER: _ClassVar[int]
    CRASH_COUNT_FIELD_NUMBER: _ClassVar[int]
    CRASH_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_ERROR_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MODIFICATION_TAG_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_LRP_INTERNAL_ROUTES_FIELD_NUMBER: _ClassVar[int]
    METRIC_TAGS_FIELD_NUMBER: _ClassVar[int]
    ROUTABLE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_ZONE_FIELD_NUMBER: _ClassVar[int]
    actual_lrp_key: ActualLRPKey
    actual_lrp_instance_key: ActualLRPInstanceKey
    actual_lrp_net_info: ActualLRPNetInfo
    crash_count: int
    crash_reason: str
    state: str
    placement_error: str
    since: int
    modification_tag: ModificationTag
    presence: ActualLRP.Presence
    actual_lrp_internal_routes: _containers.RepeatedCompositeFieldContainer[ActualLRPInternalRoute]
    metric_tags: _containers.ScalarMap[str, str]
    routable: bool
    availability_zone: str
    def __init__(self, actual_lrp_key: _Optional[_Union[ActualLRPKey, _Mapping]] = ..., actual_lrp_instance_key: _Optional[_Union[ActualLRPInstanceKey, _Mapping]] = ..., actual_lrp_net_info: _Optional[_Union[ActualLRPNetInfo, _Mapping]] = ..., crash_count: _Optional[int] = ..., crash_reason: _Optional[str] = ..., state: _Optional[str] = ..., placement_error: _Optional[str] = ..., since: _Optional[int] = ..., modification_tag: _Optional[_Union[ModificationTag, _Mapping]] = ..., presence: _Optional[_Union[ActualLRP.Presence, str]] = ..., actual_lrp_internal_routes: _Optional[_Iterable[_Union[ActualLRPInternalRoute, _Mapping]]] = ..., metric_tags: _Optional[_Mapping[str, str]] = ..., routable: _Optional[bool] = ..., availability_zone: _Optional[str] = ...) -> None: ...

class ActualLRPGroup(_message.Message):
    __slots__ = ("instance", "evacuating")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    EVACUATING_FIELD_NUMBER: _ClassVar[int]
    instance: ActualLRP
    evacuating: ActualLRP
    def __init__(self, instance: _Optional[_Union[ActualLRP, _Mapping]] = ..., evacuating: _Optional[_Union[ActualLRP, _Mapping]] = ...) -> None: ...

class ActualLRPInfo(_message.Message):
    __slots__ = ("actual_lrp_net_info", "crash_count", "crash_reason", "state", "placement_error", "since", "modification_tag", "presence", "routable", "availability_zone")
    ACTUAL_LRP_NET_INFO_FIELD_NUMBER: _ClassVar[int]
    CRASH_COUNT_FIELD_NUMBER: _ClassVar[int]
    CRASH_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_ERROR_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MODIFICATION_TAG_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    ROUTABLE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_ZONE_FIELD_NUMBER: _ClassVar[int]
    actual_lrp_net_info: ActualLRPNetInfo
    crash_count: int
    crash_reason: str
    state: str
    placement_error: str
    since: int
    modification_tag: ModificationTag
    presence: ActualLRP.Presence
    routable: bool
    availability_zone: str
    def __init__(self, actual_lrp_net_info: _Optional[_Union[ActualLRPNetInfo, _Mapping]] = ..., crash_count: _Optional[int] = ..., crash_reason: _Optional[str] = ..., state: _Optional[str] = ..., placement_error: _Optional[str] = ..., since: _Optional[int] = ..., modification_tag: _Optional[_Union[ModificationTag, _Mapping]] = ..., presence: _Optional[_Union[ActualLRP.Presence, str]] = ..., routable: _Optional[bool] = ..., availability_zone: _Optional[str] = ...) -> None: ...

class DesiredLRP(_message.Message):
    __slots__ = ("process_guid", "domain", "root_fs", "instances", "ports", "log_source", "log_guid", "metrics_guid", "annotation", "egress_rules", "modification_tag", "network", "placement_tags", "metric_tags", "update_strategy")
    class UpdateStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ROLLING: _ClassVar[DesiredLRP.UpdateStrategy]
        RECREATE: _ClassVar[DesiredLRP.UpdateStrategy]
    ROLLING: DesiredLRP.UpdateStrategy
    RECREATE: DesiredLRP.UpdateStrategy
    class MetricTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetricTagValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetricTagValue, _Mapping]] = ...) -> None: ...
    PROCESS_GUID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ROOT_FS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    LOG_SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOG_GUID_FIELD_NUMBER: _ClassVar[int]
    METRICS_GUID_FIELD_NUMBER: _ClassVar[int]
    ANNOTATION_FIELD_NUMBER: _ClassVar[int]
    EGRESS_RULES_FIELD_NUMBER: _ClassVar[int]
    MODIFICATION_TAG_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_TAGS_FIELD_NUMBER: _ClassVar[int]
    METRIC_TAGS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    process_guid: str
    domain: str
    root_fs: str
    instances: int
    ports: _containers.RepeatedScalarFieldContainer[int]
    log_source: str
    log_guid: str
    metrics_guid: str
    annotation: str
    egress_rules: _containers.RepeatedCompositeFieldContainer[SecurityGroupRule]
    modification_tag: ModificationTag
    network: Network
    placement_tags: _containers.RepeatedScalarFieldContainer[str]
    metric_tags: _containers.MessageMap[str, MetricTagValue]
    update_strategy: DesiredLRP.UpdateStrategy
    def __init__(self, process_guid: _Optional[str] = ..., domain: _Optional[str] = ..., root_fs: _Optional[str] = ..., instances: _Optional[int] = ..., ports: _Optional[_Iterable[int]] = ..., log_source: _Optional[str] = ..., log_guid: _Optional[str] = ..., metrics_guid: _Optional[str] = ..., annotation: _Optional[str] = ..., egress_rules: _Optional[_Iterable[_Union[SecurityGroupRule, _Mapping]]] = ..., modification_tag: _Optional[_Union[ModificationTag, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., placement_tags: _Optional[_Iterable[str]] = ..., metric_tags: _Optional[_Mapping[str, MetricTagValue]] = ..., update_strategy: _Optional[_Union[DesiredLRP.UpdateStrategy, str]] = ...) -> None: ...

class TaskDefinition(_message.Message):
    __slots__ = ("root_fs", "log_source", "log_guid", "metrics_guid", "annotation", "egress_rules", "network", "placement_tags", "metric_tags")
    class MetricTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetricTagValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetricTagValue, _Mapping]] = ...) -> None: ...
    ROOT_FS_FIELD_NUMBER: _ClassVar[int]
    LOG_SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOG_GUID_FIELD_NUMBER: _ClassVar[int]
    METRICS_GUID_FIELD_NUMBER: _ClassVar[int]
    ANNOTATION_FIELD_NUMBER: _ClassVar[int]
    EGRESS_RULES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_TAGS_FIELD_NUMBER: _ClassVar[int]
    METRIC_TAGS_FIELD_NUMBER: _ClassVar[int]
    root_fs: str
    log_source: str
    log_guid: str
    metrics_guid: str
    annotation: str
    egress_rules: _containers.RepeatedCompositeFieldContainer[SecurityGroupRule]
    network: Network
    placement_tags: _containers.RepeatedScalarFieldContainer[str]
    metric_tags: _containers.MessageMap[str, MetricTagValue]
    def __init__(self, root_fs: _Optional[str] = ..., log_source: _Optional[str] = ..., log_guid: _Optional[str] = ..., metrics_guid: _Optional[str] = ..., annotation: _Optional[str] = ..., egress_rules: _Optional[_Iterable[_Union[SecurityGroupRule, _Mapping]]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., placement_tags: _Optional[_Iterable[str]] = ..., metric_tags: _Optional[_Mapping[str, MetricTagValue]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_definition", "task_guid", "domain", "created_at", "updated_at", "first_completed_at", "state", "cell_id", "result", "failed", "failure_reason", "rejection_count", "rejection_reason")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        Invalid: _ClassVar[Task.State]
        Pending: _ClassVar[Task.State]
        Running: _ClassVar[Task.State]
        Completed: _ClassVar[Task.State]
        Resolving: _ClassVar[Task.State]
    Invalid: Task.State
    Pending: Task.State
    Running: Task.State
    Completed: Task.State
    Resolving: Task.State
    TASK_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    TASK_GUID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    REJECTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTION_REASON_FIELD_NUMBER: _ClassVar[int]
    task_definition: TaskDefinition
    task_guid: str
    domain: str
    created_at: int
    updated_at: int
    first_completed_at: int
    state: Task.State
    cell_id: str
    result: str
    failed: bool
    failure_reason: str
    rejection_count: int
    rejection_reason: str
    def __init__(self, task_definition: _Optional[_Union[TaskDefinition, _Mapping]] = ..., task_guid: _Optional[str] = ..., domain: _Optional[str] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., first_completed_at: _Optional[int] = ..., state: _Optional[_Union[Task.State, str]] = ..., cell_id: _Optional[str] = ..., result: _Optional[str] = ..., failed: _Optional[bool] = ..., failure_reason: _Optional[str] = ..., rejection_count: _Optional[int] = ..., rejection_reason: _Optional[str] = ...) -> None: ...

class ActualLRPsRequest(_message.Message):
    __slots__ = ("domain", "cell_id", "process_guid", "index")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_GUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    domain: str
    cell_id: str
    process_guid: str
    index: int
    def __init__(self, domain: _Optional[str] = ..., cell_id: _Optional[str] = ..., process_guid: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ActualLRPsResponse(_message.Message):
    __slots__ = ("error", "actual_lrps")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_LRPS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    actual_lrps: _containers.RepeatedCompositeFieldContainer[ActualLRP]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., actual_lrps: _Optional[_Iterable[_Union[ActualLRP, _Mapping]]] = ...) -> None: ...

class DesiredLRPsRequest(_message.Message):
    __slots__ = ("domain", "process_guids", "app_guids")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    PROCESS_GUIDS_FIELD_NUMBER: _ClassVar[int]
    APP_GUIDS_FIELD_NUMBER: _ClassVar[int]
    domain: str
    process_guids: _containers.RepeatedScalarFieldContainer[str]
    app_guids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, domain: _Optional[str] = ..., process_guids: _Optional[_Iterable[str]] = ..., app_guids: _Optional[_Iterable[str]] = ...) -> None: ...

class DesiredLRPsResponse(_message.Message):
    __slots__ = ("error", "desired_lrps")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DESIRED_LRPS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    desired_lrps: _containers.RepeatedCompositeFieldContainer[DesiredLRP]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., desired_lrps: _Optional[_Iterable[_Union[DesiredLRP, _Mapping]]] = ...) -> None: ...

class TasksRequest(_message.Message):
    __slots__ = ("domain", "cell_id")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    domain: str
    cell_id: str
    def __init__(self, domain: _Optional[str] = ..., cell_id: _Optional[str] = ...) -> None: ...

class TasksResponse(_message.Message):
    __slots__ = ("error", "tasks")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class EventsByCellId(_message.Message):
    __slots__ = ("cell_id",)
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    cell_id: str
    def __init__(self, cell_id: _Optional[str] = ...) -> None: ...

class DesiredLRPCreatedEvent(_message.Message):
    __slots__ = ("desired_lrp", "trace_id")
    DESIRED_LRP_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    desired_lrp: DesiredLRP
    trace_id: str
    def __init__(self, desired_lrp: _Optional[_Union[DesiredLRP, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class DesiredLRPChangedEvent(_message.Message):
    __slots__ = ("before", "after", "trace_id")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    before: DesiredLRP
    after: DesiredLRP
    trace_id: str
    def __init__(self, before: _Optional[_Union[DesiredLRP, _Mapping]] = ..., after: _Optional[_Union[DesiredLRP, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class DesiredLRPRemovedEvent(_message.Message):
    __slots__ = ("desired_lrp", "trace_id")
    DESIRED_LRP_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    desired_lrp: DesiredLRP
    trace_id: str
    def __init__(self, desired_lrp: _Optional[_Union[DesiredLRP, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class ActualLRPInstanceCreatedEvent(_message.Message):
    __slots__ = ("actual_lrp", "trace_id")
    ACTUAL_LRP_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    actual_lrp: ActualLRP
    trace_id: str
    def __init__(self, actual_lrp: _Optional[_Union[ActualLRP, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class ActualLRPInstanceChangedEvent(_message.Message):
    __slots__ = ("actual_lrp_key", "actual_lrp_instance_key", "before", "after", "trace_id")
    ACTUAL_LRP_KEY_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_LRP_INSTANCE_KEY_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    actual_lrp_key: ActualLRPKey
    actual_lrp_instance_key: ActualLRPInstanceKey
    before: ActualLRPInfo
    after: ActualLRPInfo
    trace_id: str
    def __init__(self, actual_lrp_key: _Optional[_Union[ActualLRPKey, _Mapping]] = ..., actual_lrp_instance_key: _Optional[_Union[ActualLRPInstanceKey, _Mapping]] = ..., before: _Optional[_Union[ActualLRPInfo, _Mapping]] = ..., after: _Optional[_Union[ActualLRPInfo, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class ActualLRPInstanceRemovedEvent(_message.Message):
    __slots__ = ("actual_lrp", "trace_id")
    ACTUAL_LRP_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    actual_lrp: ActualLRP
    trace_id: str
    def __init__(self, actual_lrp: _Optional[_Union[ActualLRP, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class ActualLRPCrashedEvent(_message.Message):
    __slots__ = ("actual_lrp_key", "actual_lrp_instance_key", "crash_count", "crash_reason", "since")
    ACTUAL_LRP_KEY_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_LRP_INSTANCE_KEY_FIELD_NUMBER: _ClassVar[int]
    CRASH_COUNT_FIELD_NUMBER: _ClassVar[int]
    CRASH_REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    actual_lrp_key: ActualLRPKey
    actual_lrp_instance_key: ActualLRPInstanceKey
    crash_count: int
    crash_reason: str
    since: int
    def __init__(self, actual_lrp_key: _Optional[_Union[ActualLRPKey, _Mapping]] = ..., actual_lrp_instance_key: _Optional[_Union[ActualLRPInstanceKey, _Mapping]] = ..., crash_count: _Optional[int] = ..., crash_reason: _Optional[str] = ..., since: _Optional[int] = ...) -> None: ...

class TaskCreatedEvent(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class TaskChangedEvent(_message.Message):
    __slots__ = ("before", "after")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    before: Task
    after: Task
    def __init__(self, before: _Optional[_Union[Task, _Mapping]] = ..., after: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class TaskRemovedEvent(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class ActualLRPCreatedEvent(_message.Message):
    __slots__ = ("actual_lrp_group",)
    ACTUAL_LRP_GROUP_FIELD_NUMBER: _ClassVar[int]
    actual_lrp_group: ActualLRPGroup
    def __init__(self, actual_lrp_group: _Optional[_Union[ActualLRPGroup, _Mapping]] = ...) -> None: ...

class ActualLRPChangedEvent(_message.Message):
    __slots__ = ("before", "after")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    before: ActualLRPGroup
    after: ActualLRPGroup
    def __init__(self, before: _Optional[_Union[ActualLRPGroup, _Mapping]] = ..., after: _Optional[_Union[ActualLRPGroup, _Mapping]] = ...) -> None: ...

class ActualLRPRemovedEvent(_message.Message):
    __slots__ = ("actual_lrp_group",)
    ACTUAL_LRP_GROUP_FIELD_NUMBER: _ClassVar[int]
    actual_lrp_group: ActualLRPGroup
    def __init__(self, actual_lrp_group: _Optional[_Union[ActualLRPGroup, _Mapping]] = ...) -> None: ...
