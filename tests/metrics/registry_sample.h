// Reads one series back from a prometheus-cpp registry, for tests of the services' metrics.
#pragma once

#include <string>

#include "gtest/gtest.h"
#include "prometheus/registry.h"

namespace indexcache::testing {

// The series of family `name` whose labels include every one of `labels`: a counter's or gauge's
// value, or a histogram's sample count (its sum in `*sum` when given). Fails the test when none.
inline double Sample(const prometheus::Registry& registry, const std::string& name,
                     const prometheus::Labels& labels = {}, double* sum = nullptr) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      bool match = true;
      for (const auto& [key, value] : labels) {
        bool has = false;
        for (const prometheus::ClientMetric::Label& label : metric.label) has |= label.name == key && label.value == value;
        match &= has;
      }
      if (!match) continue;
      switch (family.type) {
        case prometheus::MetricType::Counter:
          return metric.counter.value;
        case prometheus::MetricType::Gauge:
          return metric.gauge.value;
        case prometheus::MetricType::Histogram:
          if (sum != nullptr) *sum = metric.histogram.sample_sum;
          return static_cast<double>(metric.histogram.sample_count);
        default:
          break;
      }
    }
  }
  ADD_FAILURE() << "no series " << name;
  return -1;
}

}  // namespace indexcache::testing
