#include "common/metrics/build_info_metric.h"

#include "common/util/build_info.h"
#include "prometheus/gauge.h"

namespace indexcache {

void RegisterBuildInfo(prometheus::Registry& registry) {
  const BuildInfo& info = GetBuildInfo();
  prometheus::BuildGauge()
      .Name("indexcache_build_info")
      .Help("Always 1; the labels say which build this service runs (backend: the backends compiled in)")
      .Register(registry)
      .Add({{"version", info.version}, {"commit", info.commit}, {"backend", info.backends}})
      .Set(1);
}

}  // namespace indexcache
