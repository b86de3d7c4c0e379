/* Architecture builders: torchvision ResNet-18/34/50 and wide ResNet-50-2, the CIFAR
 * ResNet-20 and the Madry MNIST CNN, with torchvision's parameter names and order. */
#include <stdio.h>
#include <string.h>

#include "arch.h"

typedef struct convp {
    int w, b, bn;
    int64_t C, K;
} convp;

static void name2(char *buf, size_t n, const char *prefix, const char *leaf) { snprintf(buf, n, "%s.%s", prefix, leaf); }

/* Declares a convolution's parameters (and its batch norm's when bn is not NULL), in
 * torchvision's order: weight, bias, then bn weight, bias, running_mean, running_var. */
static convp conv_params(eng_model *m, const char *conv, const char *bn, int64_t C, int64_t K, int k, bool bias,
                         arch_init init)
{
    char name[160];
    convp p = {-1, -1, -1, C, K};
    int64_t wd[4] = {K, C, k, k};
    name2(name, sizeof name, conv, "weight");
    p.w = arch_param(m, name, 4, wd, false, init);
    if (bias) {
        name2(name, sizeof name, conv, "bias");
        p.b = arch_param(m, name, 1, &K, false, INIT_TORCH_DEFAULT);
        if (p.b >= 0)
            m->pinfo[p.b].fan_in = C * k * k;
    }
    if (bn) {
        static const char *leaf[4] = {"weight", "bias", "running_mean", "running_var"};
        static const arch_init inits[4] = {INIT_ONE, INIT_ZERO, INIT_ZERO, INIT_ONE};
        for (int i = 0; i < 4; i++) {
            name2(name, sizeof name, bn, leaf[i]);
            int idx = arch_param(m, name, 1, &K, i >= 2, inits[i]);
            if (i == 0)
                p.bn = idx;
        }
        m->has_bn = true;
    }
    return p;
}

static int conv_layer(eng_model *m, convp p, int in, int k, int stride, int pad, bool relu, int res)
{
    arch_layer_desc d = {.kind = LAYER_CONV, .in = in, .res = res, .w = p.w, .b = p.b, .bn = p.bn, .k = k,
                         .stride = stride, .pad = pad, .relu = relu, .bn_eps = 1e-5f, .bn_momentum = 0.1f,
                         .in_c = p.C, .out_c = p.K};
    return arch_layer(m, &d);
}

static int linear(eng_model *m, const char *prefix, int in, int64_t I, int64_t O, bool relu)
{
    char name[160];
    int64_t wd[2] = {O, I};
    name2(name, sizeof name, prefix, "weight");
    int w = arch_param(m, name, 2, wd, false, INIT_TORCH_DEFAULT);
    name2(name, sizeof name, prefix, "bias");
    int b = arch_param(m, name, 1, &O, false, INIT_TORCH_DEFAULT);
    if (b >= 0)
        m->pinfo[b].fan_in = I;
    arch_layer_desc d = {.kind = LAYER_LINEAR, .in = in, .res = -1, .w = w, .b = b, .bn = -1, .relu = relu,
                         .in_c = I, .out_c = O};
    return arch_layer(m, &d);
}

/* A hidden layer of the classifier: linear, optional batch norm over the batch, relu. */
static int linear_bn(eng_model *m, const char *prefix, int in, int64_t I, int64_t O, bool bn)
{
    char lin[96], name[160];
    snprintf(lin, sizeof lin, "%s.linear", prefix);
    int64_t wd[2] = {O, I};
    name2(name, sizeof name, lin, "weight");
    int w = arch_param(m, name, 2, wd, false, INIT_TORCH_DEFAULT);
    name2(name, sizeof name, lin, "bias");
    int b = arch_param(m, name, 1, &O, false, INIT_TORCH_DEFAULT);
    if (b >= 0)
        m->pinfo[b].fan_in = I;
    int g = -1;
    if (bn) {
        static const char *leaf[4] = {"weight", "bias", "running_mean", "running_var"};
        static const arch_init inits[4] = {INIT_ONE, INIT_ZERO, INIT_ZERO, INIT_ONE};
        char bnp[96];
        snprintf(bnp, sizeof bnp, "%s.bn", prefix);
        for (int i = 0; i < 4; i++) {
            name2(name, sizeof name, bnp, leaf[i]);
            int idx = arch_param(m, name, 1, &O, i >= 2, inits[i]);
            if (i == 0)
                g = idx;
        }
        m->has_bn = true;
    }
    arch_layer_desc d = {.kind = LAYER_LINEAR, .in = in, .res = -1, .w = w, .b = b, .bn = g, .relu = true,
                         .bn_eps = 1e-5f, .bn_momentum = 0.1f, .in_c = I, .out_c = O};
    return arch_layer(m, &d);
}

static int simple(eng_model *m, layer_kind kind, int in, int k, int stride, int pad)
{
    arch_layer_desc d = {.kind = kind, .in = in, .res = -1, .w = -1, .b = -1, .bn = -1, .k = k, .stride = stride,
                         .pad = pad};
    return arch_layer(m, &d);
}

/* Input and normalisation: layers 0 and 1 of every model. */
static int stem_input(eng_model *m)
{
    simple(m, LAYER_INPUT, -1, 0, 0, 0);
    return simple(m, LAYER_NORMALIZE, 0, 0, 0, 0);
}

/* The classifier on the features of layer x: the spec's hidden layers, then "fc". */
static eng_status classifier(eng_model *m, int x, int64_t features)
{
    const eng_head_spec *h = &m->spec.head;
    for (int i = 0; i < h->n_hidden; i++) {
        char prefix[32], block[32];
        snprintf(prefix, sizeof prefix, "head.%d", i);
        snprintf(block, sizeof block, "head.%d.", i);
        x = linear_bn(m, prefix, x, features, h->hidden[i], h->bn);
        features = h->hidden[i];
        if (h->dropout > 0) {
            arch_layer_desc d = {.kind = LAYER_DROPOUT, .in = x, .res = -1, .w = -1, .b = -1, .bn = -1,
                                 .drop_p = h->dropout};
            x = arch_layer(m, &d);
        }
        arch_block(m, block, NULL);
    }
    linear(m, "fc", x, features, m->spec.num_classes, false);
    arch_block(m, "fc.", NULL);
    return m->build_error;
}

/* Global average pooling to the penultimate features, then the classifier. */
static int head(eng_model *m, int x, int64_t channels)
{
    int g = simple(m, LAYER_GAP, x, 0, 0, 0);
    if (g >= 0)
        m->layers[g].d.out_c = channels;
    m->feature_layer = g;
    return classifier(m, g, channels);
}

/* torchvision BasicBlock: conv3x3(stride) bn relu conv3x3 bn, plus identity or downsample, relu. */
static int basic_block(eng_model *m, const char *prefix, int x, int64_t inplanes, int64_t planes, int stride)
{
    char a[160], b[160];
    name2(a, sizeof a, prefix, "conv1");
    name2(b, sizeof b, prefix, "bn1");
    convp c1 = conv_params(m, a, b, inplanes, planes, 3, false, INIT_KAIMING_OUT);
    name2(a, sizeof a, prefix, "conv2");
    name2(b, sizeof b, prefix, "bn2");
    convp c2 = conv_params(m, a, b, planes, planes, 3, false, INIT_KAIMING_OUT);
    int identity = x;
    convp ds = {-1, -1, -1, 0, 0};
    bool down = stride != 1 || inplanes != planes;
    if (down) {
        name2(a, sizeof a, prefix, "downsample.0");
        name2(b, sizeof b, prefix, "downsample.1");
        ds = conv_params(m, a, b, inplanes, planes, 1, false, INIT_KAIMING_OUT);
    }
    int y = conv_layer(m, c1, x, 3, stride, 1, true, -1);
    if (down)
        identity = conv_layer(m, ds, x, 1, stride, 0, false, -1);
    return conv_layer(m, c2, y, 3, 1, 1, true, identity);
}

/* torchvision Bottleneck (v1.5: the stride sits on the 3x3 conv); width = planes * width_mult. */
static int bottleneck(eng_model *m, const char *prefix, int x, int64_t inplanes, int64_t planes, int stride,
                      int width_mult)
{
    char a[160], b[160];
    int64_t width = planes * width_mult, outp = planes * 4;
    name2(a, sizeof a, prefix, "conv1");
    name2(b, sizeof b, prefix, "bn1");
    convp c1 = conv_params(m, a, b, inplanes, width, 1, false, INIT_KAIMING_OUT);
    name2(a, sizeof a, prefix, "conv2");
    name2(b, sizeof b, prefix, "bn2");
    convp c2 = conv_params(m, a, b, width, width, 3, false, INIT_KAIMING_OUT);
    name2(a, sizeof a, prefix, "conv3");
    name2(b, sizeof b, prefix, "bn3");
    convp c3 = conv_params(m, a, b, width, outp, 1, false, INIT_KAIMING_OUT);
    int identity = x;
    convp ds = {-1, -1, -1, 0, 0};
    bool down = stride != 1 || inplanes != outp;
    if (down) {
        name2(a, sizeof a, prefix, "downsample.0");
        name2(b, sizeof b, prefix, "downsample.1");
        ds = conv_params(m, a, b, inplanes, outp, 1, false, INIT_KAIMING_OUT);
    }
    int y = conv_layer(m, c1, x, 1, 1, 0, true, -1);
    y = conv_layer(m, c2, y, 3, stride, 1, true, -1);
    if (down)
        identity = conv_layer(m, ds, x, 1, stride, 0, false, -1);
    return conv_layer(m, c3, y, 1, 1, 0, true, identity);
}

static eng_status build_imagenet_resnet(eng_model *m, const int blocks[4], bool bottle, int width_mult)
{
    int x = stem_input(m);
    convp c1 = conv_params(m, "conv1", "bn1", m->spec.in_channels, 64, 7, false, INIT_KAIMING_OUT);
    x = conv_layer(m, c1, x, 7, 2, 3, true, -1);
    x = simple(m, LAYER_MAXPOOL, x, 3, 2, 1);
    arch_block(m, "conv1.", "bn1.");
    int64_t inplanes = 64;
    for (int li = 0; li < 4; li++) {
        int64_t planes = 64 << li;
        for (int bi = 0; bi < blocks[li]; bi++) {
            char prefix[64];
            snprintf(prefix, sizeof prefix, "layer%d.%d", li + 1, bi);
            int stride = (bi == 0 && li > 0) ? 2 : 1;
            if (bottle) {
                x = bottleneck(m, prefix, x, inplanes, planes, stride, width_mult);
                inplanes = planes * 4;
            } else {
                x = basic_block(m, prefix, x, inplanes, planes, stride);
                inplanes = planes;
            }
            strcat(prefix, ".");
            arch_block(m, prefix, NULL);
        }
    }
    return head(m, x, inplanes);
}

static eng_status build_resnet18(eng_model *m) { return build_imagenet_resnet(m, (const int[4]){2, 2, 2, 2}, false, 1); }
static eng_status build_resnet34(eng_model *m) { return build_imagenet_resnet(m, (const int[4]){3, 4, 6, 3}, false, 1); }
static eng_status build_resnet50(eng_model *m) { return build_imagenet_resnet(m, (const int[4]){3, 4, 6, 3}, true, 1); }
static eng_status build_wide50(eng_model *m) { return build_imagenet_resnet(m, (const int[4]){3, 4, 6, 3}, true, 2); }

/* CIFAR ResNet-20 (He et al. 2016, with 1x1 projection shortcuts): 3 stages of 3 basic blocks,
 * 16/32/64 channels, on 32x32 inputs. */
static eng_status build_resnet20(eng_model *m)
{
    int x = stem_input(m);
    convp c1 = conv_params(m, "conv1", "bn1", m->spec.in_channels, 16, 3, false, INIT_KAIMING_OUT);
    x = conv_layer(m, c1, x, 3, 1, 1, true, -1);
    arch_block(m, "conv1.", "bn1.");
    int64_t inplanes = 16;
    for (int li = 0; li < 3; li++) {
        int64_t planes = 16 << li;
        for (int bi = 0; bi < 3; bi++) {
            char prefix[64];
            snprintf(prefix, sizeof prefix, "layer%d.%d", li + 1, bi);
            x = basic_block(m, prefix, x, inplanes, planes, (bi == 0 && li > 0) ? 2 : 1);
            inplanes = planes;
            strcat(prefix, ".");
            arch_block(m, prefix, NULL);
        }
    }
    return head(m, x, inplanes);
}

/* The MNIST challenge CNN of Madry et al.: two 5x5 convs with max pooling, a 1024-unit hidden
 * layer (the features) and the classifier. 28x28 inputs give 64*7*7 = 3136 flattened values. */
static eng_status build_smallcnn(eng_model *m)
{
    int x = stem_input(m);
    convp c1 = conv_params(m, "conv1", NULL, m->spec.in_channels, 32, 5, true, INIT_TORCH_DEFAULT);
    x = conv_layer(m, c1, x, 5, 1, 2, true, -1);
    x = simple(m, LAYER_MAXPOOL, x, 2, 2, 0);
    arch_block(m, "conv1.", NULL);
    convp c2 = conv_params(m, "conv2", NULL, 32, 64, 5, true, INIT_TORCH_DEFAULT);
    x = conv_layer(m, c2, x, 5, 1, 2, true, -1);
    x = simple(m, LAYER_MAXPOOL, x, 2, 2, 0);
    arch_block(m, "conv2.", NULL);
    x = simple(m, LAYER_FLATTEN, x, 0, 0, 0);
    x = linear(m, "fc1", x, 64 * 7 * 7, 1024, true);
    arch_block(m, "fc1.", NULL);
    m->feature_layer = x;
    return classifier(m, x, 1024);
}

/* The classifier alone, trained on cached features (linear probe, MLP heads): its parameter
 * names match the full model's, so the trained head loads into backbone + head as is. */
static eng_status build_head(eng_model *m)
{
    int x = simple(m, LAYER_INPUT, -1, 0, 0, 0);
    x = simple(m, LAYER_FLATTEN, x, 0, 0, 0);
    m->feature_layer = x;
    if (x >= 0)
        m->layers[x].d.out_c = m->spec.in_channels;
    return classifier(m, x, m->spec.in_channels);
}

static const arch_def archs[] = {
    {"resnet18", 3, 224, build_resnet18},       {"resnet34", 3, 224, build_resnet34},
    {"resnet50", 3, 224, build_resnet50},       {"wide_resnet50_2", 3, 224, build_wide50},
    {"resnet20", 3, 32, build_resnet20},        {"smallcnn", 1, 28, build_smallcnn},
    {"head", 0, 1, build_head},
};

const arch_def *arch_lookup(const char *name)
{
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++)
        if (strcmp(archs[i].name, name) == 0)
            return &archs[i];
    return NULL;
}
