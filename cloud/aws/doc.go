// Package aws implements cloud.Provider with aws-sdk-go-v2: EC2 for instances, EBS volumes,
// snapshots, security groups and key pairs, and the classic Elastic Load Balancer.
//
// It takes an aws.Config built the standard way (profiles, AWS_REGION, AWS_ENDPOINT_URL), so the
// same code runs against AWS and against moto. Every resource is tagged with its stack in the
// create call itself, and the provider enforces rules EC2 enforces but moto does not (attach
// refusals, references before deleting a security group, the exact set of a multi-volume
// snapshot), so tests against moto exercise them.
//
// Describes of instances and volumes by id, its own and the SDK waiters', are coalesced: while
// one is in flight the ids asked for meanwhile go out together in the next call, so a stack of
// thirty hosts waits with a handful of requests rather than one per host. AWS errors read as
// their code and message ("InvalidAMIID.NotFound: ... (EC2 RunInstances)"), with the SDK's error
// kept in the chain.
package aws
