// Package cloud defines the Provider interface that provisioning, deploys and backups use to talk
// to a cloud, and the value types they exchange. cloud/aws implements it with aws-sdk-go-v2;
// cloud/sandbox implements it on one Linux machine. cloud/cloudtest is the conformance suite both
// must pass.
package cloud
