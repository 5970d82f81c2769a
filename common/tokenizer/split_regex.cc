#include "common/tokenizer/split_regex.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/tokenizer/byte_unicode.h"
#include "re2/re2.h"

namespace indexcache {
namespace {

// Members (without brackets, so they also fit inside a class) of Oniguruma's Unicode classes.
constexpr std::string_view kSpaceMembers =
    "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
constexpr std::string_view kDigitMembers = "\\p{Nd}";
constexpr std::string_view kWordMembers = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

// The lookahead pair emulated by SplitRegex (see the header).
constexpr std::string_view kWhitespaceLookahead = "\\s+(?!\\S)|\\s+";
constexpr std::string_view kWhitespaceGroupName = "ic_trailing_space";

// This absl's StrCat takes absl::string_view, which is not std::string_view here.
absl::string_view A(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status Unsupported(std::string_view pattern, size_t offset, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex '", A(pattern), "': ", A(what),
                                                 " at offset ", offset, " is not supported"));
}

// Rewrites an Oniguruma pattern into RE2 syntax. Sets *has_whitespace_group when the
// `\s+(?!\S)|\s+` alternatives were replaced by the named group.
absl::StatusOr<std::string> Translate(std::string_view p, bool* has_whitespace_group) {
  std::string out;
  out.reserve(p.size() * 2);
  int depth = 0;
  bool in_class = false;
  bool at_alternative_start = true;  // at the start of a top-level alternative
  bool after_quantifier = false;     // the previous token was a quantifier (for `++`, `*+`, ...)
  *has_whitespace_group = false;
  for (size_t i = 0; i < p.size();) {
    const char c = p[i];
    if (!in_class && depth == 0 && at_alternative_start &&
        p.substr(i).starts_with(kWhitespaceLookahead)) {
      const size_t after = i + kWhitespaceLookahead.size();
      if ((after == p.size() || p[after] == '|') && !*has_whitespace_group) {
        absl::StrAppend(&out, "(?P<", A(kWhitespaceGroupName), ">[", A(kSpaceMembers), "]+)");
        *has_whitespace_group = true;
        i = after;
        at_alternative_start = false;
        after_quantifier = false;
        continue;
      }
    }
    at_alternative_start = false;
    const bool was_quantifier = after_quantifier;
    after_quantifier = false;
    if (c == '\\') {
      if (i + 1 >= p.size()) return Unsupported(p, i, "a trailing backslash");
      const char e = p[i + 1];
      std::string_view members;
      bool negated = false;
      switch (e) {
        case 's': case 'S': members = kSpaceMembers; negated = e == 'S'; break;
        case 'd': case 'D': members = kDigitMembers; negated = e == 'D'; break;
        case 'w': case 'W': members = kWordMembers; negated = e == 'W'; break;
        default: break;
      }
      if (e == 'u' && i + 6 <= p.size() &&
          p.substr(i + 2, 4).find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos) {
        absl::StrAppend(&out, "\\x{", A(p.substr(i + 2, 4)), "}");  // Oniguruma \uHHHH
        i += 6;
        continue;
      }
      if (members.empty()) {
        size_t length = 2;
        if ((e == 'p' || e == 'P' || e == 'x') && i + 2 < p.size() && p[i + 2] == '{') {
          const size_t close = p.find('}', i + 2);  // \p{L}, \x{3000}: copy the braces along
          if (close == std::string_view::npos) return Unsupported(p, i, "an unterminated \\p{");
          length = close + 1 - i;
        }
        out.append(p.substr(i, length));
        i += length;
        continue;
      }
      if (in_class) {
        if (negated) return Unsupported(p, i, "a negated class escape inside [...]");
        out.append(members);
      } else {
        absl::StrAppend(&out, negated ? "[^" : "[", A(members), "]");
      }
      i += 2;
      continue;
    }
    if (in_class) {
      if (c == '[') {
        if (!p.substr(i).starts_with("[:")) return Unsupported(p, i, "a nested character class");
        const size_t close = p.find(":]", i + 2);
        if (close == std::string_view::npos) return Unsupported(p, i, "an unterminated [:class:]");
        out.append(p.substr(i, close + 2 - i));
        i = close + 2;
        continue;
      }
      if (c == ']') in_class = false;
      out.push_back(c);
      ++i;
      continue;
    }
    switch (c) {
      case '[':
        in_class = true;
        out.push_back(c);
        ++i;
        if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
        if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // a leading ']' is literal
        continue;
      case '(':
        for (std::string_view look : {"(?=", "(?!", "(?<=", "(?<!"}) {
          if (p.substr(i).starts_with(look)) return Unsupported(p, i, "lookaround");
        }
        if (p.substr(i).starts_with("(?>")) return Unsupported(p, i, "an atomic group");
        ++depth;
        if (p.substr(i).starts_with("(?")) {  // the '?' is no quantifier
          out.append("(?");
          i += 2;
          continue;
        }
        break;
      case ')':
        if (depth == 0) return Unsupported(p, i, "an unbalanced ')'");
        --depth;
        break;
      case '|':
        if (depth == 0) at_alternative_start = true;
        break;
      case '+':
        if (was_quantifier) return Unsupported(p, i, "a possessive quantifier");
        after_quantifier = true;
        break;
      case '*': case '?': case '}':
        after_quantifier = !(c == '?' && was_quantifier);  // `+?` is lazy, not a new quantifier
        break;
      default:
        break;
    }
    out.push_back(c);
    ++i;
  }
  if (in_class) return Unsupported(p, p.size(), "an unterminated character class");
  return out;
}

}  // namespace

SplitRegex::~SplitRegex() = default;

absl::StatusOr<std::unique_ptr<SplitRegex>> SplitRegex::Compile(std::string_view pattern) {
  bool has_whitespace_group = false;
  absl::StatusOr<std::string> translated = Translate(pattern, &has_whitespace_group);
  if (!translated.ok()) return translated.status();
  auto regex = std::unique_ptr<SplitRegex>(new SplitRegex());
  regex->re2_pattern_ = *std::move(translated);
  RE2::Options options;
  options.set_log_errors(false);
  // Unicode classes make large DFAs; RE2 falls back to its slow NFA when the budget runs out.
  options.set_max_mem(int64_t{64} << 20);
  regex->re_ = std::make_unique<RE2>(regex->re2_pattern_, options);
  if (!regex->re_->ok()) {
    return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex '", A(pattern),
                                                   "' does not compile with RE2 (as '",
                                                   regex->re2_pattern_, "'): ", regex->re_->error()));
  }
  if (has_whitespace_group) {
    regex->whitespace_group_ = regex->re_->NamedCapturingGroups().at(std::string(kWhitespaceGroupName));
  }
  return regex;
}

std::vector<std::pair<size_t, size_t>> SplitRegex::FindAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> spans;
  const re2::StringPiece input(text.data(), text.size());
  std::vector<re2::StringPiece> groups(whitespace_group_ + 1);
  size_t pos = 0;
  while (pos < text.size()) {
    re2::StringPiece match;
    if (!re_->Match(input, pos, text.size(), RE2::UNANCHORED, &match, 1)) break;
    const size_t begin = match.data() - text.data();
    size_t end = begin + match.size();
    if (end == begin) {  // an empty match pieces nothing out; step over one character
      pos = begin + DecodeUtf8At(text, begin).length;
      continue;
    }
    if (whitespace_group_ > 0 && end < text.size()) {
      // Candidate for the lookahead give-back: two or more characters, all whitespace.
      size_t chars = 0;
      size_t last_char = begin;
      bool all_space = true;
      for (size_t i = begin; i < end && all_space;) {
        Utf8Char ch = DecodeUtf8At(text, i);
        all_space = ch.valid && IsUnicodeWhitespace(ch.codepoint);
        last_char = i;
        i += ch.length;
        ++chars;
      }
      if (all_space && chars >= 2 &&
          re_->Match(input, begin, text.size(), RE2::ANCHOR_START, groups.data(),
                     static_cast<int>(groups.size())) &&
          groups[whitespace_group_].data() != nullptr) {
        end = last_char;
      }
    }
    spans.emplace_back(begin, end);
    pos = end;
  }
  return spans;
}

}  // namespace indexcache
