# clients/edge/gen_header.cmake — writes the installed <cairn_edge.h>.
#
#   cmake -DTOP=<repository root> -DOUT=<file> -P gen_header.cmake
#
# The in-tree clients/edge/cairn_edge.h includes common/error.h and adapt/cema_select.h; a device
# maker's build has neither. The installed copy replaces those two includes with what they
# declare: common/error.h whole (the error codes, cairn_error and the four error functions, all of
# them exported), and from adapt/cema_select.h only cairn_cema_select_params and its defaults
# function (the selector itself stays internal). Generated rather than copied by hand, so the
# installed declarations cannot drift from the ones the library is compiled with. Any other
# quoted include left in the result is an error: the installed header must stand alone.
foreach(v TOP OUT)
    if(NOT DEFINED ${v})
        message(FATAL_ERROR "gen_header.cmake: -D${v}= is required")
    endif()
endforeach()

file(READ ${TOP}/clients/edge/cairn_edge.h h)
file(READ ${TOP}/common/error.h error_h)
file(READ ${TOP}/adapt/cema_select.h select_h)

string(REGEX MATCH "typedef struct cairn_cema_select_params {[^}]*} cairn_cema_select_params;"
       select_struct "${select_h}")
string(REGEX MATCH "cairn_cema_select_params cairn_cema_select_default_params\\(void\\);"
       select_fn "${select_h}")
if(NOT select_struct OR NOT select_fn)
    message(FATAL_ERROR "gen_header.cmake: adapt/cema_select.h no longer declares "
                        "cairn_cema_select_params and cairn_cema_select_default_params(void) "
                        "as this script expects")
endif()

# adapt/cema_select.h's opening comment says what the parameters mean and their defaults.
string(FIND "${select_h}" "*/" end)
if(end EQUAL -1)
    message(FATAL_ERROR "gen_header.cmake: adapt/cema_select.h has no opening comment")
endif()
math(EXPR end "${end} + 2")
string(SUBSTRING "${select_h}" 0 ${end} select_doc)

set(error_block "/* ==== From cairn's common/error.h ==== */\n${error_h}")
string(APPEND error_block "/* ==== End of common/error.h ==== */")
set(select_block "/* ==== From cairn's adapt/cema_select.h (cairn_edge_params.select) ==== */
${select_doc}
${select_struct}

${select_fn}
/* ==== End of adapt/cema_select.h ==== */")

foreach(inc "common/error.h" "adapt/cema_select.h")
    string(FIND "${h}" "#include \"${inc}\"" at)
    if(at EQUAL -1)
        message(FATAL_ERROR "gen_header.cmake: cairn_edge.h no longer includes \"${inc}\"")
    endif()
endforeach()
string(REPLACE "#include \"common/error.h\"" "${error_block}" h "${h}")
string(REPLACE "#include \"adapt/cema_select.h\"" "${select_block}" h "${h}")
string(REPLACE
    "/* The installed header inlines these two (clients/edge/gen_header.cmake). */"
    "/* Generated from cairn's clients/edge/cairn_edge.h by clients/edge/gen_header.cmake. */"
    h "${h}")

string(REGEX MATCH "#[ \t]*include[ \t]*\"[^\"]*\"" left "${h}")
if(left)
    message(FATAL_ERROR "gen_header.cmake: the installed header would still have ${left}")
endif()

file(WRITE ${OUT}.tmp "${h}")
file(COPY_FILE ${OUT}.tmp ${OUT} ONLY_IF_DIFFERENT)
file(REMOVE ${OUT}.tmp)
