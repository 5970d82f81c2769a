// Between the client's plain structs (client_types.h) and the indexcache.v1 messages. Optional
// sampling fields are copied only when set, so an unset field stays unset on the wire.
#pragma once

#include "indexcache/client_types.h"
#include "indexcache/v1/generate.pb.h"

namespace indexcache::client {

v1::GenerateRequest ToProto(const GenerateRequest& request);
GenerateChunk FromProto(const v1::GenerateResponse& response);
ModelInfo FromProto(const v1::ModelInfoResponse& response);

}  // namespace indexcache::client
