// Package aws implements cloud.Provider with aws-sdk-go-v2: EC2 for instances, EBS volumes,
// snapshots, security groups and key pairs, and the classic Elastic Load Balancer.
//
// It takes an aws.Config built the standard way (profiles, AWS_REGION, AWS_ENDPOINT_URL), so the
// same code runs against AWS and against moto. Every resource is tagged with its stack in the
// create call itself, and the provider enforces rules EC2 enforces but moto does not (attach
// refusals, references before deleting a security group, the exact set of a multi-volume
// snapshot), so tests against moto exercise them.
package aws
