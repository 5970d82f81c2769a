// `indexcache_build_info{version, commit, backend} 1`: which build a service runs, in every service's
// registry (the Prometheus convention for build metadata, as Go's and Dynamo's *_build_info).
#pragma once

#include "prometheus/registry.h"

namespace indexcache {

void RegisterBuildInfo(prometheus::Registry& registry);

}  // namespace indexcache
