package cloud

import "errors"

// ErrNoCapacity marks a create the cloud refused for want of capacity for that instance type or
// volume in that zone, now (AWS InsufficientInstanceCapacity, InsufficientVolumeCapacity, or an
// instance that died pending for that reason). Another zone or instance type may have it;
// retrying the same one at once does not help.
var ErrNoCapacity = errors.New("no capacity")

// ErrLimit marks a create an account limit refused (AWS InstanceLimitExceeded,
// VcpuLimitExceeded): only a limit increase or a smaller stack helps.
var ErrLimit = errors.New("account limit reached")
